"""Decoding of OpenAI token-array inputs with tiktoken's `cl100k_base` (what LangChain sends).

The encoding file cannot be downloaded on these machines, so it is read from a configured
directory (`TIKTOKEN_CACHE_DIR`, where tiktoken itself caches it under the same file name) and its
SHA-256 is checked. Loaded once, lazily, thread-safe. Never reads the environment itself.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tldw_Server_API.app.core.errors import InvalidInput

CL100K_FILE_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"  # sha1 of tiktoken's download URL
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

_MISSING_HELP = (
    "token-array inputs need tiktoken's cl100k_base file, which this server cannot download. "
    f"Put the file '{CL100K_FILE_NAME}' (sha256 {CL100K_SHA256[:12]}...) in a directory and set "
    "TIKTOKEN_CACHE_DIR to it: scripts/install.sh does this from the litellm wheel, which ships it as "
    f"litellm/litellm_core_utils/tokenizers/{CL100K_FILE_NAME}. Or send the input as strings."
)


def parse_tiktoken_bpe(contents: bytes) -> dict[bytes, int]:
    """tiktoken's file format: one `base64(token) rank` pair per line."""
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class TokenArrayDecoder:
    """Turns cl100k_base token ids back into text for providers that do not take token ids."""

    def __init__(self, cache_dir: Path | None) -> None:
        self._cache_dir = cache_dir
        self._encoding: Any = None
        self._valid_ids: range | None = None
        self._special_ids: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._encoding is not None:
                return self._encoding
            path = self._cache_dir / CL100K_FILE_NAME if self._cache_dir else None
            if path is None or not path.is_file():
                raise InvalidInput(_MISSING_HELP, param="input", code="token_arrays_unavailable")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
                raise InvalidInput(
                    f"the cl100k_base file in TIKTOKEN_CACHE_DIR is corrupt. {_MISSING_HELP}",
                    param="input",
                    code="token_arrays_unavailable",
                )
            import tiktoken
            from tiktoken_ext.openai_public import ENDOFPROMPT, ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

            ranks = parse_tiktoken_bpe(data)
            specials = {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260,
                        ENDOFPROMPT: 100276}
            self._encoding = tiktoken.Encoding(
                name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=specials
            )
            self._valid_ids = range(len(ranks))
            self._special_ids = frozenset(specials.values())
            return self._encoding

    def decode(self, token_ids: Sequence[int], *, param: str) -> str:
        encoding = self._load()
        assert self._valid_ids is not None
        for j, token in enumerate(token_ids):
            if token not in self._valid_ids and token not in self._special_ids:
                raise InvalidInput(
                    f"'{param}[{j}]' is {token}, not a cl100k_base token id", param=f"{param}[{j}]"
                )
        text: str = encoding.decode(list(token_ids), errors="replace")
        if not text.strip():
            raise InvalidInput(f"'{param}' decodes to empty text", param=param)
        return text

    def encode(self, text: str) -> list[int]:
        """cl100k_base ids of `text` (what OpenAI clients send); used by tests and benchmarks."""
        return list(self._load().encode(text, disallowed_special=()))


_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
