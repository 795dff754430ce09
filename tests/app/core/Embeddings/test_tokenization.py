"""cl100k_base token arrays decoded with the real encoding file (no download)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from tldw_Server_API.app.core.Embeddings.tokenization import (
    CL100K_FILE_NAME,
    TokenArrayDecoder,
    parse_tiktoken_bpe,
)
from tldw_Server_API.app.core.errors import InvalidInput

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing\n\nnewlines\n",
    "naïve café — déjà vu",
    "日本語のテキストと中文",
    "emoji 🚀🧪 and 👩‍👩‍👧 family",
    "code: def f(x):\n    return x**2  # it's 123456789",
    "I'll we've they're",
]


@pytest.fixture(scope="module")
def decoder(tiktoken_dir: Path) -> TokenArrayDecoder:
    return TokenArrayDecoder(tiktoken_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_inverts_encode(decoder: TokenArrayDecoder, text: str) -> None:
    ids = decoder.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert decoder.decode(ids, param="input[0]") == text


def test_ids_equal_tiktokens_own_cl100k_base(
    decoder: TokenArrayDecoder, tiktoken_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_dir))
    reference = tiktoken.get_encoding("cl100k_base")
    for text in [*TEXTS, "<|endoftext|> stays text", "1234567 9999"]:
        assert decoder.encode(text) == reference.encode(text, disallowed_special=())
    assert decoder.encode("hello world") == [15339, 1917]


def test_special_token_ids_decode(decoder: TokenArrayDecoder) -> None:
    assert decoder.decode([15339, 100257], param="input[0]") == "hello<|endoftext|>"


@pytest.mark.parametrize("bad", [-1, 100256, 100261, 10**9])
def test_invalid_ids_are_rejected_by_position(decoder: TokenArrayDecoder, bad: int) -> None:
    with pytest.raises(InvalidInput) as info:
        decoder.decode([15339, 1917, bad], param="input[0]")
    assert info.value.param == "input[0][2]"
    assert str(bad) in info.value.message


def test_ids_that_decode_to_whitespace_are_rejected(decoder: TokenArrayDecoder) -> None:
    with pytest.raises(InvalidInput) as info:
        decoder.decode(decoder.encode("   \n"), param="input[3]")
    assert info.value.param == "input[3]"


def _assert_unavailable(decoder: TokenArrayDecoder) -> None:
    with pytest.raises(InvalidInput) as info:
        decoder.decode([15339], param="input[0]")
    assert info.value.code == "token_arrays_unavailable"
    assert info.value.param == "input"
    assert "TIKTOKEN_CACHE_DIR" in info.value.message


@pytest.mark.parametrize("where", [None, "missing-dir", "empty-dir"])
def test_missing_encoding_file_is_explained(tmp_path: Path, where: str | None) -> None:
    if where == "empty-dir":
        (tmp_path / where).mkdir()
    _assert_unavailable(TokenArrayDecoder(tmp_path / where if where else None))


def test_corrupt_encoding_file_is_refused(tmp_path: Path, tiktoken_dir: Path) -> None:
    target = tmp_path / CL100K_FILE_NAME
    shutil.copyfile(tiktoken_dir / CL100K_FILE_NAME, target)
    with target.open("ab") as handle:
        handle.write(b"AA== 100256\n")
    decoder = TokenArrayDecoder(tmp_path)
    _assert_unavailable(decoder)
    with pytest.raises(InvalidInput, match="corrupt"):
        decoder.encode("hello")


def test_parse_tiktoken_bpe_reads_a_hand_made_file() -> None:
    tokens = [b"a", b"b", b"ab", b"\xff\x00", b" the"]
    contents = b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n" for rank, tok in enumerate(tokens))
    contents += b"\n"  # blank lines are skipped
    assert parse_tiktoken_bpe(contents) == {tok: rank for rank, tok in enumerate(tokens)}
    assert parse_tiktoken_bpe(b"") == {}


def test_parse_tiktoken_bpe_reads_the_real_file(tiktoken_dir: Path) -> None:
    ranks = parse_tiktoken_bpe((tiktoken_dir / CL100K_FILE_NAME).read_bytes())
    assert len(ranks) == 100256
    assert sorted(ranks.values()) == list(range(100256))
    assert ranks[b"hello"] == 15339
