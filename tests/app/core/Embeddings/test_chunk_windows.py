"""Chunks that fit the model: the bundled MiniLM's window (256 tokens, 2 of them special), default
`tokens` chunking never exceeding it on random real text (a property test over the long
descriptions of the installed packages, tokenised by the model itself), explicit sizes that cannot
fit refused, and long inputs cut into window-sized pieces for the `mean` mode."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import make_settings, real_texts

from tldw_Server_API.app.core.Chunking import chunk_text
from tldw_Server_API.app.core.config import ChunkingDefaults
from tldw_Server_API.app.core.Embeddings.chunk_windows import (
    ModelWindow,
    ModelWindows,
    resolve_chunking,
    split_long_inputs,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import create_provider_registry
from tldw_Server_API.app.core.errors import InvalidInput

MODEL = "huggingface:sentence-transformers/all-MiniLM-L6-v2"
DEFAULTS = ChunkingDefaults(method="tokens", max_size=0, overlap=32, max_allowed_size=10_000)


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> ModelWindow:
    settings = make_settings(tmp_path_factory.mktemp("windows"), auto_download_models=False)
    return ModelWindows(create_provider_registry(settings.engine_config())).window(MODEL)


@pytest.fixture(scope="module")
def hf_tokenizer(bundled_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path))


def test_the_bundled_model_window(window: ModelWindow) -> None:
    assert (window.max_tokens, window.budget, window.exact) == (256, 254, True)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(200, 12_000))
def test_default_chunks_never_exceed_the_window(window: ModelWindow, hf_tokenizer: Any, which: int, start: int,
                                                length: int) -> None:
    texts = real_texts()
    source = texts[which % len(texts)]
    offset = start % max(1, len(source) - length)
    text = source[offset:offset + length]
    options = resolve_chunking(None, None, None, DEFAULTS, window, MODEL)
    assert (options.method, options.max_size, options.overlap) == ("tokens", 254, 32)
    chunks = chunk_text(text, options, window.tokenizer)
    for chunk in chunks:
        assert text[chunk.start_char:chunk.end_char] == chunk.text
        assert len(hf_tokenizer(chunk.text)["input_ids"]) <= 256   # with [CLS] and [SEP]
    covered = "".join(text[c.start_char:c.end_char] for c in chunks)
    assert set(re.sub(r"\s", "", text)) <= set(covered)


def test_an_explicit_size_that_cannot_fit_is_refused_naming_the_limit(window: ModelWindow) -> None:
    for method, size in [("tokens", 255), ("tokens", 1000), ("words", 300)]:
        with pytest.raises(InvalidInput) as caught:
            resolve_chunking(method, size, None, DEFAULTS, window, MODEL)
        assert caught.value.param == "chunk_size" and caught.value.code == "chunk_size_exceeds_window"
        assert "254 tokens" in caught.value.message and "256" in caught.value.message
    assert resolve_chunking("tokens", 254, None, DEFAULTS, window, MODEL).max_size == 254
    assert resolve_chunking("tokens", 0, None, DEFAULTS, window, MODEL).max_size == 254   # 0: the whole window
    assert resolve_chunking("sentences", 40, None, DEFAULTS, window, MODEL).max_size == 40   # not boundable


def test_a_configured_default_larger_than_the_window_is_lowered_to_it(window: ModelWindow) -> None:
    big = ChunkingDefaults(method="tokens", max_size=1000, overlap=200, max_allowed_size=10_000)
    options = resolve_chunking(None, None, None, big, window, MODEL)
    assert (options.max_size, options.overlap) == (254, 50)   # overlap at most a fifth of the chunk


def test_other_methods_need_a_size_when_the_default_is_the_window(window: ModelWindow) -> None:
    with pytest.raises(InvalidInput, match="needs a chunk_size") as caught:
        resolve_chunking("words", None, None, DEFAULTS, window, MODEL)
    assert caught.value.param == "chunk_size"
    with pytest.raises(InvalidInput) as overlap:
        resolve_chunking("tokens", 100, 100, DEFAULTS, window, MODEL)
    assert overlap.value.param == "chunk_overlap"


def test_long_inputs_split_into_window_sized_pieces(window: ModelWindow, hf_tokenizer: Any) -> None:
    long_text = " ".join(real_texts()[0].split()[:3000])
    plan = split_long_inputs(["short text", long_text, "another"], window)
    assert plan.pooled == (1,) and plan.groups[0] == range(0, 1) and plan.groups[2] == range(len(plan.pieces) - 1,
                                                                                            len(plan.pieces))
    pieces = [plan.pieces[i] for i in plan.groups[1]]
    assert len(pieces) > 5 and all(len(hf_tokenizer(p)["input_ids"]) <= 256 for p in pieces)
    assert sum(plan.weights[i] for i in plan.groups[1]) >= len(hf_tokenizer(long_text, add_special_tokens=False)
                                                               ["input_ids"]) - 5
    assert plan.owners([0, plan.groups[1][2]]) == (0, 1)


def test_a_remote_model_window_is_estimated_with_a_margin(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auto_download_models=False, openai_api_key="sk-test")
    window = ModelWindows(create_provider_registry(settings.engine_config())).window("openai:text-embedding-3-small")
    assert (window.max_tokens, window.budget, window.exact) == (8191, 6143, False)
    options = resolve_chunking("tokens", None, None, DEFAULTS, window, "openai:text-embedding-3-small")
    assert options.max_size == 6143
