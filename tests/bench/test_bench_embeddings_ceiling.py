"""bench/bench_embeddings.py reports each machine's arithmetic ceiling (issue #18: whether a speed
bar is above what the CPU can compute at all): the FLOPs a token of the corpus costs, each
core's measured product peak, and every engine's share of the ceiling of its precision. The
arithmetic is checked against hand-computed figures; the peak measurement runs for real on a
small product."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench = importlib.import_module("bench_embeddings")


def test_flops_per_token_counts_the_linear_layers_and_attention_over_each_rows_own_length() -> None:
    # MiniLM-L6: hidden 384, intermediate 1536, 6 layers: 2 x 6 x (4 x 384^2 + 2 x 384 x 1536) a token
    flops = bench.flops_per_token(384, 1536, 6, [100, 200])
    assert flops["linear"] == 21_233_664
    # 4 x 6 x 384 x L per token, weighted by tokens: (100^2 + 200^2) / 300 = 166.67
    assert flops["attention"] == pytest.approx(9216 * 50_000 / 300)
    assert flops["total"] == pytest.approx(flops["linear"] + flops["attention"])
    # attention grows with the row: the same tokens in one row cost more than in short ones
    assert bench.flops_per_token(384, 1536, 6, [300])["attention"] > flops["attention"]


def test_the_ceiling_takes_the_faster_fp32_product_and_every_core() -> None:
    flops = {"linear": 18e6, "attention": 2e6, "total": 20e6}
    peaks = {"torch_fp32": 80.0, "onnxruntime_fp32": 100.0, "torch_bf16": 200.0}
    ceiling = bench.arithmetic_ceiling(flops, peaks, cores=2, reference_tokens_per_s=5_000.0)
    fp32, bf16 = ceiling["precisions"]["fp32"], ceiling["precisions"]["bf16"]
    assert fp32["per_core_gflops"] == 100.0
    assert fp32["tokens_per_s"] == pytest.approx(10_000.0)          # 100e9 x 2 / 20e6
    assert fp32["vs_sentence_transformers"] == pytest.approx(2.0)
    assert bf16["tokens_per_s"] == pytest.approx(20_000.0)
    # no bf16 hardware: no bf16 ceiling; no reference: no ratio
    plain = bench.arithmetic_ceiling(flops, {"torch_fp32": 80.0, "onnxruntime_fp32": 60.0}, 1, None)
    assert set(plain["precisions"]) == {"fp32"}
    assert plain["precisions"]["fp32"]["tokens_per_s"] == pytest.approx(4_000.0)
    assert plain["precisions"]["fp32"]["vs_sentence_transformers"] is None


def test_shares_of_the_ceiling_go_to_exact_engines_and_http_models_by_their_precision() -> None:
    ceiling = {"precisions": {"fp32": {"tokens_per_s": 10_000.0}, "bf16": {"tokens_per_s": 20_000.0}}}
    engines = {"sentence-transformers": {"tokens_per_s": 4_000.0},
               "huggingface fp32": {"tokens_per_s": 6_000.0},
               "huggingface bf16": {"tokens_per_s": 12_000.0},
               "onnx int8": {"tokens_per_s": 15_000.0}}
    http = {"bare id": {"engine": "huggingface:m@bf16", "tokens_per_s": 11_000.0},
            "onnx fp32": {"engine": "onnx:m@fp32", "tokens_per_s": 7_000.0},
            "onnx int8": {"engine": "onnx:m@int8", "tokens_per_s": 13_000.0}}
    bench.shares_of_ceiling(ceiling, engines, http)
    assert engines["huggingface fp32"]["share_of_ceiling"] == pytest.approx(0.6)
    assert engines["huggingface bf16"]["share_of_ceiling"] == pytest.approx(0.6)
    assert "share_of_ceiling" not in engines["sentence-transformers"]
    assert "share_of_ceiling" not in engines["onnx int8"]                # approximate: no ceiling
    assert http["bare id"]["share_of_ceiling"] == pytest.approx(0.55)
    assert http["onnx fp32"]["share_of_ceiling"] == pytest.approx(0.7)
    assert "share_of_ceiling" not in http["onnx int8"]
    note = bench.ceiling_note({"arithmetic_ceiling": {
        "cores": 2, "flops_per_token": {"total": 20e6, "attention": 2e6},
        "product_peaks_per_core_gflops": {"torch_fp32": 100.0, "onnxruntime_fp32": 90.0},
        "precisions": {"fp32": {"tokens_per_s": 10_000.0, "vs_sentence_transformers": 2.5}}},
        "http": http, "engines": engines})
    assert "10,000 tok/s = 2.50x sentence-transformers" in note
    assert "through HTTP 55%" in note and "its engine alone 60%" in note


def test_the_product_peaks_are_measured_on_this_cpu() -> None:
    peaks = bench.product_peaks(shape=(64, 64, 128), repeats=3)
    assert {"torch_fp32", "onnxruntime_fp32"} <= set(peaks)
    assert ("torch_bf16" in peaks) == bench.cpu_capabilities.detect().bf16
    assert all(math.isfinite(gflops) and gflops > 0 for gflops in peaks.values())
