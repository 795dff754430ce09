"""`tokenize_rows` against transformers' own call: the direct Rust-backend path gives the same
ids, truncated rows too (texts flagged long directly), a backend left truncating (tokenizer.json's
own setting, or a caller's) is cleared and used directly, truncating leaves it untruncated for the
next count, and end tokens are appended once. On the
bundled MiniLM tokenizer and the tiny Qwen3 one (both end-token layouts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_encoding import tokenize_rows

TEXTS = ["The cat sat on the mat.", "", " ", "[CLS] inside [SEP] text", "naïve café 東京 😀 \u00a0x",
         "word " * 700, "Interest rates rose by a quarter point.", "what is the capital of france ?",
         "paris is the capital of france . " * 40]


def expected(tokenizer: Any, texts: list[str], limit: int | None, end: int | None) -> list[list[int]]:
    rows = tokenizer(texts, truncation=limit is not None, max_length=limit, padding=False)["input_ids"]
    return rows if end is None else [r if r and r[-1] == end else [*r, end] for r in rows]


class BackendCounting:
    """A tokenizer that counts the calls reaching its Rust backend directly (not through
    transformers' call, which it passes on)."""

    def __init__(self, real: Any) -> None:
        self.real, self.direct = real, 0
        outer = self

        class Backend:
            def __getattr__(self, name: str) -> Any:
                return getattr(real.backend_tokenizer, name)

            def encode_batch(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
                outer.direct += 1
                return real.backend_tokenizer.encode_batch(texts, *args, **kwargs)

        self.backend_tokenizer = Backend()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.real(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture(scope="module", params=["minilm", "qwen3", "qwen3-eos"])
def tokenizer_and_end(request: pytest.FixtureRequest, bundled_model_path: Path, tiny_qwen3: Callable[..., Path],
                      tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, int | None]:
    if request.param == "minilm":
        return AutoTokenizer.from_pretrained(str(bundled_model_path)), None
    path = tiny_qwen3(tmp_path_factory.mktemp(request.param), eos_post_processor=request.param == "qwen3-eos")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return tokenizer, tokenizer.convert_tokens_to_ids("<|endoftext|>")


@pytest.mark.parametrize("limit", [None, 512, 16])
def test_rows_equal_transformers_call(tokenizer_and_end: tuple[Any, int | None], limit: int | None) -> None:
    tokenizer, end = tokenizer_and_end
    texts = list(TEXTS)
    budget = None if limit is None else limit - (end is not None)
    want = expected(tokenizer, texts, budget, end)
    assert tokenize_rows(tokenizer, texts, limit, end) == want
    flagged = [len(row) > (budget or 10**9) for row in expected(tokenizer, texts, None, end)]
    assert tokenize_rows(tokenizer, texts, limit, end, long=flagged) == want
    assert tokenize_rows(tokenizer, texts, None, end) == expected(tokenizer, texts, None, end)


def test_the_backend_is_called_directly_and_left_without_truncation(bundled_model_path: Path) -> None:
    real = AutoTokenizer.from_pretrained(str(bundled_model_path))
    tokenizer = BackendCounting(real)
    short, long = ["a search query", "another one"], ["paris is the capital of france . " * 40]
    backend = real.backend_tokenizer
    assert backend.truncation is not None and backend.padding is not None   # tokenizer.json's: cleared,
    assert tokenize_rows(tokenizer, short, None) == expected(real, short, None, None)   # as transformers would
    assert backend.truncation is None and backend.padding is None
    assert tokenizer.direct == 1
    backend.enable_truncation(4)                             # as a caller's truncating call leaves it
    assert tokenize_rows(tokenizer, short, None) == expected(real, short, None, None)
    assert tokenizer.direct == 2
    cut, whole = expected(real, long, 16, None), expected(real, long, None, None)   # (transformers' calls set
    assert tokenize_rows(tokenizer, long, 16) == cut          # and clear the backend's truncation themselves)
    assert tokenizer.direct == 4                              # counted, then cut: both direct
    assert backend.truncation is None                         # the next count is not cut (nor slowed)
    assert tokenize_rows(tokenizer, long, None) == whole
    assert tokenizer.direct == 5
    backend.enable_truncation(4)
    assert tokenize_rows(tokenizer, long, 16, long=[True]) == cut
    assert tokenizer.direct == 6 and backend.truncation is None
