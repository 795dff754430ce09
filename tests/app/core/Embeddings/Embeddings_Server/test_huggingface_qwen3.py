"""The huggingface provider on a tiny randomly initialised Qwen3 embedding model built here: the
real load/tokenise/pad/forward path with last-token pooling, left padding with position ids, the
end token, and instruction formatting of queries, checked against the model run on each text
alone with no padding."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from tldw_Server_API.app.core.config import DEFAULT_PROMPTS_FILE, BatchingConfig, HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_encoding import BatchEncoder
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.qwen3_instructions import DEFAULT_TASK

MODEL_ID = "test-org/tiny-Qwen3-Embedding"            # contains qwen3 + embedding: the Qwen3 path
EOS_MODEL_ID = "test-org/tiny-Qwen3-Embedding-eos"      # same weights; its tokenizer appends the end token
PLAIN_ID = "test-org/tiny-qwen3-plain"                  # same weights, not an embedding-model id
DOCS = ["paris is the capital of france .", "a short note",
        "the cat sat on the mat while the dog slept by the door and the cat sat on the mat again"]
QUERIES = ["what is the capital of france", "how do magnets work ?", "the capital of france ?"]
BATCHING = BatchingConfig(max_wait_ms=1, max_queue_texts=1000,
                          max_padded_tokens=1024, max_batch_rows=16)
ATOL = 2e-5


def _query(text: str) -> str:
    return f"Instruct: {DEFAULT_TASK}\nQuery:{text}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Callable[..., Path]) -> Path:
    root = tmp_path_factory.mktemp("qwen3-models")
    tiny_qwen3(root / MODEL_ID.replace("/", "--"))
    tiny_qwen3(root / EOS_MODEL_ID.replace("/", "--"), eos_post_processor=True)
    tiny_qwen3(root / PLAIN_ID.replace("/", "--"))
    return root


@pytest.fixture(scope="module")
def provider(root: Path) -> Iterator[HuggingFaceProvider]:
    provider = HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), ModelResolver(root), BATCHING,
                                   prompts_file=DEFAULT_PROMPTS_FILE)
    yield provider
    asyncio.run(provider.aclose())


@pytest.fixture(scope="module")
def reference(root: Path) -> Callable[[str], np.ndarray]:
    """The model on one already-formatted text, no padding: hidden state of its last token
    (the text's tokens followed by `<|endoftext|>`)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = root / MODEL_ID.replace("/", "--")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def embed(text: str) -> np.ndarray:
        ids = [*tokenizer(text)["input_ids"], end]
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state
        return hidden[0, -1].float().numpy()

    return embed


def _embed(provider: HuggingFaceProvider, model_id: str, texts: list[str]) -> Any:
    return asyncio.run(provider.embed(model_id, texts))


def test_qwen3_is_served_with_last_token_pooling_and_left_padding(provider: HuggingFaceProvider) -> None:
    info = provider.model_info(MODEL_ID)
    assert (info.dimension, info.max_tokens, info.source) == (32, 64, "cache")
    profile = provider.profile(MODEL_ID)
    assert (profile.pooling, profile.padding_side, profile.instructions) == ("lasttoken", "left", True)
    assert provider.profile(PLAIN_ID).pooling == "mean" and not provider.profile(PLAIN_ID).instructions


def test_batch_of_different_lengths_equals_each_text_alone(provider: HuggingFaceProvider,
                                                           reference: Callable[[str], np.ndarray]) -> None:
    texts = DOCS + QUERIES
    batch = _embed(provider, MODEL_ID, texts)
    assert batch.vectors.shape == (len(texts), 32) and np.isfinite(batch.vectors).all()
    alone = np.vstack([_embed(provider, MODEL_ID, [text]).vectors for text in texts])
    assert_allclose(batch.vectors, alone, atol=ATOL)
    expected = np.vstack([reference(text) for text in DOCS] + [reference(_query(q)) for q in QUERIES])
    assert_allclose(batch.vectors, expected, atol=ATOL)


def test_left_and_right_padding_give_the_same_vectors(root: Path, provider: HuggingFaceProvider) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = root / MODEL_ID.replace("/", "--")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()

    def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
        names = {"input_ids", "attention_mask", "position_ids"}
        tensors = {k: torch.from_numpy(v) for k, v in encoded.items() if k in names}
        with torch.inference_mode():
            hidden = model(**tensors, use_cache=False).last_hidden_state.numpy()
        return pool(hidden, encoded["attention_mask"], "lasttoken")

    def encoder(side: str) -> BatchEncoder:
        return BatchEncoder(tokenizer=tokenizer, forward=forward, max_tokens=64, dimension=32, batch_size=16,
                            max_padded_tokens=1024, padding_side=side,
                            end_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    texts = DOCS + [_query(q) for q in QUERIES]
    left, right = encoder("left").encode(texts), encoder("right").encode(texts)
    assert_allclose(left.vectors, right.vectors, atol=ATOL)
    assert left.token_counts == right.token_counts
    assert_allclose(_embed(provider, MODEL_ID, texts).vectors, left.vectors, atol=ATOL)


def test_queries_get_the_instruction_documents_do_not(provider: HuggingFaceProvider,
                                                      reference: Callable[[str], np.ndarray]) -> None:
    question = "how do magnets work ?"
    assert provider.prepare_texts(MODEL_ID, [question, DOCS[0]]) == [_query(question), DOCS[0]]
    instructed = _embed(provider, MODEL_ID, [question]).vectors[0]
    manual = _embed(provider, MODEL_ID, [_query(question)]).vectors[0]       # already carries its instruction
    assert_allclose(instructed, manual, atol=ATOL)
    assert_allclose(instructed, reference(_query(question)), atol=ATOL)
    assert not np.allclose(instructed, reference(question), atol=1e-3)      # the bare text is another input
    assert_allclose(_embed(provider, MODEL_ID, [DOCS[0]]).vectors[0], reference(DOCS[0]), atol=ATOL)


def test_instructions_are_not_doubled_and_counts_match_what_runs(provider: HuggingFaceProvider,
                                                                  root: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(root / MODEL_ID.replace("/", "--")))
    question, already = "who wrote hamlet ?", _query("who wrote hamlet ?")
    assert provider.prepare_texts(MODEL_ID, [already]) == [already]
    counts = asyncio.run(provider.count_tokens(MODEL_ID, [question, already, DOCS[1]]))
    expected = len(tokenizer(already)["input_ids"]) + 1                      # + the appended end token
    assert counts == [expected, expected, len(tokenizer(DOCS[1])["input_ids"]) + 1]
    assert _embed(provider, MODEL_ID, [question, already]).token_counts == counts[:2]
    plain = asyncio.run(provider.count_tokens(PLAIN_ID, [question]))
    assert plain == [len(tokenizer(question)["input_ids"])]                # other models: as the tokenizer says


def test_a_tokenizer_that_appends_the_end_token_gets_no_second_one(provider: HuggingFaceProvider) -> None:
    texts = DOCS + QUERIES
    with_eos = _embed(provider, EOS_MODEL_ID, texts)
    without = _embed(provider, MODEL_ID, texts)
    assert with_eos.token_counts == without.token_counts
    assert asyncio.run(provider.count_tokens(EOS_MODEL_ID, texts)) == without.token_counts
    assert_allclose(with_eos.vectors, without.vectors, atol=ATOL)


def test_truncation_keeps_the_end_token(provider: HuggingFaceProvider, root: Path,
                                        reference: Callable[[str], np.ndarray]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(root / MODEL_ID.replace("/", "--")))
    long_text = "the cat sat on the mat " * 30                             # 180 tokens, the limit is 64
    batch = _embed(provider, MODEL_ID, [long_text, DOCS[1]])
    assert batch.token_counts == [64, len(tokenizer(DOCS[1])["input_ids"]) + 1]
    kept = tokenizer.decode(tokenizer(long_text)["input_ids"][:63])          # 63 tokens + the end token
    assert_allclose(batch.vectors[0], reference(kept), atol=ATOL)
    assert_allclose(batch.vectors[1], reference(DOCS[1]), atol=ATOL)


def test_onnx_provider_serves_qwen3_the_same_way(root: Path, provider: HuggingFaceProvider) -> None:
    from tldw_Server_API.app.core.config import OnnxConfig
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.onnx_provider import OnnxProvider

    onnx = OnnxProvider(OnnxConfig(threads=0, quantize="fp32"), ModelResolver(root), BATCHING,
                        prompts_file=DEFAULT_PROMPTS_FILE)
    texts = DOCS + QUERIES
    try:
        exported = asyncio.run(onnx.embed(f"{MODEL_ID}@fp32", texts))
        assert onnx.profile(f"{MODEL_ID}@fp32").pooling == "lasttoken"
        assert asyncio.run(onnx.count_tokens(f"{MODEL_ID}@fp32", texts)) == exported.token_counts
    finally:
        asyncio.run(onnx.aclose())
    assert_allclose(exported.vectors, _embed(provider, MODEL_ID, texts).vectors, atol=ATOL)
