"""One contract, every local provider (huggingface, onnx fp32, onnx int8): same shape and order,
token counts, and vectors close to sentence-transformers on the same real texts (fp32 paths:
cosine >= 0.9999 each; int8: mean >= 0.99, min reported)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import MODEL, cosine_rows, make_settings

from tldw_Server_API.app.core.config import (
    BatchingConfig,
    HuggingFaceConfig,
    ModelCatalogConfig,
    OnnxConfig,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (
    EmbeddingProvider,
    create_provider_registry,
)
from tldw_Server_API.app.core.Embeddings.input_processing import l2_normalize

TEXTS = [
    "The mitochondria is the powerhouse of the cell, producing most of its ATP.",
    "Interest rates rose by a quarter point, and bond yields followed.",
    "She plays the cello in the city orchestra on weekends.",
    "A compiler translates source code into machine code.",
    "Heavy rain is expected across the northern region tomorrow evening.",
    "Short.",
    "The treaty was signed in 1648, ending decades of war in central Europe, " * 3,
    "naïve café résumé — unicode text ✓",
] * 3

CASES = [
    ("huggingface", MODEL, "fp32"),
    ("onnx", f"{MODEL}@fp32", "fp32"),
    ("onnx", f"{MODEL}@int8", "int8"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = tmp_path_factory.mktemp("models")
    config = dataclasses.replace(
        make_settings(model_dir).engine_config(),
        catalog=ModelCatalogConfig(models=(f"huggingface:{MODEL}",), default_model=MODEL, model_dir=model_dir),
        huggingface=HuggingFaceConfig(torch_threads=0, device="cpu"),
        onnx=OnnxConfig(threads=0, quantize="fp32"),
        batching=BatchingConfig(max_wait_ms=1, max_queue_texts=1000,
                                max_padded_tokens=1024, max_batch_rows=8),
    )
    registry = create_provider_registry(config)
    yield registry
    asyncio.run(registry.aclose())


@pytest.mark.parametrize(("provider_name", "model_id", "precision"), CASES, ids=[c[1] for c in CASES])
def test_local_provider_contract(registry: Any, reference: Any, st_model: Any,
                                 provider_name: str, model_id: str, precision: str) -> None:
    provider: EmbeddingProvider = registry.get(provider_name)
    assert isinstance(provider, EmbeddingProvider)
    info = provider.model_info(model_id)
    assert (info.provider, info.model_id, info.dimension, info.max_tokens) == (provider_name, model_id, 384, 256)

    counts = asyncio.run(provider.count_tokens(model_id, TEXTS))
    assert counts == [len(ids) for ids in st_model.tokenizer(TEXTS)["input_ids"]]
    batch = asyncio.run(provider.embed(model_id, TEXTS))
    assert batch.vectors.shape == (len(TEXTS), 384) and batch.vectors.dtype == np.float32
    assert batch.token_counts == counts
    vectors = l2_normalize(batch.vectors)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = cosine_rows(vectors, reference(TEXTS))
    if precision == "fp32":
        assert cosines.min() >= 0.9999, cosines.min()
    else:
        assert cosines.mean() >= 0.99 and cosines.min() >= 0.97, (cosines.mean(), cosines.min())
        print(f"int8 cosine to sentence-transformers: mean {cosines.mean():.4f} min {cosines.min():.4f}")
    assert model_id in provider.loaded_models()


def test_onnx_export_is_cached_on_disk(registry: Any) -> None:
    provider = registry.get("onnx")
    asyncio.run(provider.embed(f"{MODEL}@int8", ["warm"]))
    fp32, int8 = provider.graph_path(f"{MODEL}@fp32"), provider.graph_path(f"{MODEL}@int8")
    assert fp32.is_file() and int8.is_file() and int8.stat().st_size < fp32.stat().st_size
    assert fp32.parent.parent.parent == Path(provider._onnx_root) and fp32.parent.name == "bundled"
    before = fp32.stat().st_mtime_ns
    assert provider.ensure_exported(f"{MODEL}@fp32") == fp32 and fp32.stat().st_mtime_ns == before
    assert not list(fp32.parent.glob("*.tmp"))


def test_onnx_sessions_record_no_memory_plan_per_input_shape() -> None:
    """onnxruntime's memory pattern keeps an allocation plan per input shape, and passes come in
    many shapes: the process then grew for as long as new ones came (bench/README.md, soak)."""
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.onnx_provider import session_options

    options = session_options(2)
    assert options.enable_mem_pattern is False
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert session_options(0).intra_op_num_threads == 0          # onnxruntime's own default


def test_onnx_unknown_variant_is_a_400(registry: Any) -> None:
    from tldw_Server_API.app.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="variant"):
        registry.get("onnx").model_info(f"{MODEL}@int4")


@pytest.mark.parametrize("model_id", [f"{MODEL}@fp32", f"{MODEL}@int8"])
def test_onnx_runs_lone_passes_wide_and_shared_passes_single_threaded(registry: Any, model_id: str) -> None:
    """EMBEDDINGS_ONNX_THREADS auto on 2+ cores: two passes at once, a wide session for a pass alone
    (the lone-pass thread, or inline on the event loop) and a single-threaded one for the shared
    threads (a session's width is fixed); both give the same vectors, and the model's cache entry
    counts both sessions."""
    import os

    import onnxruntime

    provider: Any = registry.get("onnx")
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: one session, one pass at a time")
    made: list[tuple[int, Any]] = []

    def where() -> str:
        threads = provider._passes()
        return "lone" if threads.on_lone_thread() else "shared" if threads.on_pass_thread() else "other"

    ran: list[tuple[int, str]] = []                 # (session width, where) per run
    real = onnxruntime.InferenceSession

    def recording(path: str, options: Any, **kwargs: Any) -> Any:
        made.append((options.intra_op_num_threads, path))
        session = real(path, options, **kwargs)
        width, run = options.intra_op_num_threads, session.run
        session.run = lambda *a, **k: (ran.append((width, where())), run(*a, **k))[1]
        return session

    async def run() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        await provider.unload(model_id)
        onnxruntime.InferenceSession = recording
        try:
            encoder = await provider.loaded_encoder(model_id)
        finally:
            onnxruntime.InferenceSession = real
        lone = await asyncio.to_thread(encoder.encode, TEXTS[:4])          # one pass: the lone thread
        threads = provider._passes()
        shared = await asyncio.wrap_future(threads.shared(encoder.encode, TEXTS[:4]))  # in place, shared thread
        inline = encoder.run_rows(encoder.tokenize(TEXTS[:1]))   # as an inline pass on the event loop runs it
        alone = await asyncio.to_thread(encoder.encode, TEXTS[:1])   # int8: quantised per pass, so one text
        np.testing.assert_allclose(inline, alone.vectors, atol=1e-5)
        return lone.vectors, shared.vectors, await provider.health()

    lone, shared, health = asyncio.run(run())
    assert sorted(threads for threads, _ in made) == [1, cores] and len({path for _, path in made}) == 1
    assert set(ran) == {(cores, "lone"), (1, "shared"), (cores, "other")}
    assert provider.parallel_passes() == 2
    assert health["session_threads"] == {"lone": cores, "shared": 1}
    graph = provider.graph_path(model_id)
    assert health["model_cache"]["models"][model_id]["estimated_mb"] == round(2 * graph.stat().st_size / 2**20, 1)
    np.testing.assert_allclose(lone, shared, atol=1e-5)
