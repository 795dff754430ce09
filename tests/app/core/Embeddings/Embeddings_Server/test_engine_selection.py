"""The engine of a bare model id (issue #18): CPU capabilities, the candidates, the quality guard
(a path below the cosine bar is never a default), the choice by measurement on the real bundled
model (onnxruntime and torch), its record reused by a later process, and prefixes that pin."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import MODEL, make_settings

from tldw_Server_API.app.core.config import EngineSelectionConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.cpu_capabilities import CpuCapabilities, from_cpuinfo
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import create_provider_registry
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import (
    Candidate,
    EngineFacts,
    Measurement,
    QualityBar,
    candidates,
    choose,
    rule,
    verdict,
)
from tldw_Server_API.app.core.errors import InvalidInput

ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\n"
ZEN5 = "model name\t: AMD EPYC 9B45\nflags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16 avx_vnni\n"
SPR = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"
AVX2_ONLY = from_cpuinfo(ZEN3)
WITH_FAST_PATHS = from_cpuinfo(ZEN5)
CPU_FACTS = EngineFacts(device="cpu", onnx_available=True, onnx_bare_variant="fp32", encoder=True)


def test_cpu_capabilities_from_cpuinfo() -> None:
    assert AVX2_ONLY.model_name == "AMD EPYC 7B13" and not AVX2_ONLY.int8_dot and not AVX2_ONLY.bf16
    assert WITH_FAST_PATHS.int8_dot and WITH_FAST_PATHS.bf16
    amx = from_cpuinfo(SPR)
    assert amx.int8_dot and amx.bf16 and "amx_bf16" in amx.summary()["flags"]  # type: ignore[operator]
    assert AVX2_ONLY.fingerprint() != WITH_FAST_PATHS.fingerprint()
    assert from_cpuinfo("").flags == frozenset()


def test_candidates_by_cpu_capabilities() -> None:
    fp32 = candidates(MODEL, CPU_FACTS, AVX2_ONLY)
    assert [c.spec for c in fp32] == [f"huggingface:{MODEL}", f"onnx:{MODEL}"]
    every = candidates(MODEL, CPU_FACTS, WITH_FAST_PATHS)
    assert [c.engine for c in every] == ["huggingface:fp32", "onnx:fp32", "huggingface:bf16", "onnx:int8"]
    assert [c.model_id for c in every[2:]] == [f"{MODEL}@bf16", f"{MODEL}@int8"]
    assert [c.explicit_id for c in every] == [f"{MODEL}@fp32", f"{MODEL}@fp32", f"{MODEL}@bf16", f"{MODEL}@int8"]
    # No onnx candidate on a GPU, for a decoder (left padding), without onnxruntime, or when `onnx:<id>` is int8.
    for facts in (dataclasses.replace(CPU_FACTS, device="cuda"), dataclasses.replace(CPU_FACTS, encoder=False),
                  dataclasses.replace(CPU_FACTS, onnx_available=False),
                  dataclasses.replace(CPU_FACTS, onnx_bare_variant="int8")):
        assert [c.provider for c in candidates(MODEL, facts, AVX2_ONLY)] == ["huggingface"]
    assert rule(fp32).spec == f"onnx:{MODEL}" and rule(fp32[:1]).spec == f"huggingface:{MODEL}"
    assert rule(every).spec == f"onnx:{MODEL}"    # never a reduced precision unmeasured


def test_a_configured_engine_applies_where_it_can_run_the_model() -> None:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import ChoiceStore, EngineChooser

    def chooser(engine: str, facts: EngineFacts) -> EngineChooser:
        config = EngineSelectionConfig(engine, "exact", 0.99, 0.975)  # type: ignore[arg-type]
        return EngineChooser(config, AVX2_ONLY, ChoiceStore(None), lambda _m: facts, lambda _m: "r")

    assert chooser("onnx", CPU_FACTS).choice(MODEL).chosen == f"onnx:{MODEL}"
    decoder = dataclasses.replace(CPU_FACTS, encoder=False)      # e.g. a Qwen3 embedding model: no onnx export
    assert chooser("onnx", decoder).choice(MODEL).chosen == f"huggingface:{MODEL}"
    assert chooser("huggingface", CPU_FACTS).choice(MODEL).how == "configured"


def test_a_record_that_cannot_be_written_leaves_the_choice_in_this_process(tmp_path: Path) -> None:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import ChoiceStore, EngineChooser

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the model dir should be")
    config = EngineSelectionConfig("auto", "exact", 0.99, 0.975)
    chooser = EngineChooser(config, AVX2_ONLY, ChoiceStore(blocker / "engine_choice.json"),
                            lambda _m: CPU_FACTS, lambda _m: "r")
    chosen = chooser.decide(MODEL, [_m("huggingface", "fp32", 0.5, 1.0, 1.0), _m("onnx", "fp32", 1.0, 1.0, 1.0)])
    assert chosen.chosen == f"huggingface:{MODEL}" and chooser.choice(MODEL).how == "measured"


def _m(provider: str, precision: str, seconds: float, mean: float, low: float) -> Measurement:
    model = MODEL if precision == "fp32" else f"{MODEL}@{precision}"
    c = Candidate(provider, model, precision)  # type: ignore[arg-type]
    return Measurement(c, seconds, mean, low, verdict(c, mean, low, QualityBar()))


def test_quality_guard_never_makes_a_path_below_the_bar_a_default() -> None:
    reference = _m("huggingface", "fp32", 1.0, 1.0, 1.0)
    onnx = _m("onnx", "fp32", 0.6, 1.0, 0.99995)
    bf16 = _m("huggingface", "bf16", 0.4, 0.998, 0.99)
    int8_low_min = _m("onnx", "int8", 0.2, 0.993, 0.96)        # mean fine, one text below 0.975
    int8_low_mean = _m("onnx", "int8", 0.2, 0.985, 0.98)
    assert [m.verdict for m in (reference, onnx, bf16, int8_low_min, int8_low_mean)] == [
        "reference", "exact", "within_bar", "below_bar", "below_bar"]
    every = [reference, onnx, bf16, int8_low_min, int8_low_mean]
    assert choose(every, "fast") is bf16            # the fastest within the bar, not the faster int8 below it
    assert choose(every, "exact") is onnx           # exact mode: exact engines only
    bf16_exact = _m("huggingface", "bf16", 0.4, 0.99998, 0.99992)
    assert bf16_exact.verdict == "exact" and choose([reference, onnx, bf16_exact], "exact") is bf16_exact
    # The rule's engine keeps a tie (within 5 %): noise must not flip the choice between starts.
    close = _m("huggingface", "fp32", 0.97, 1.0, 1.0)
    assert choose([close, onnx], "exact", prefer=onnx.candidate) is onnx
    assert choose([_m("huggingface", "fp32", 0.5, 1.0, 1.0), onnx], "exact", prefer=onnx.candidate) is not onnx
    # An fp32 engine that does not reproduce the reference is refused as well.
    drifting = _m("onnx", "fp32", 0.1, 0.9999, 0.999)
    assert drifting.verdict == "below_bar" and choose([reference, drifting], "exact") is reference
    # Nothing timed but the reference: the reference.
    assert choose([reference, Measurement(onnx.candidate)], "fast") is reference


def test_a_path_within_the_bar_must_beat_the_fastest_exact_engine_clearly() -> None:
    """Quality wins a tie: an approximate path within 5 % of an exact engine is not chosen."""
    reference = _m("huggingface", "fp32", 0.55, 1.0, 1.0)
    bf16_exact = _m("huggingface", "bf16", 0.2367, 0.99999, 0.99998)
    int8 = _m("onnx", "int8", 0.2297, 0.9942, 0.9906)            # 3 % faster (measured, Xeon with AMX)
    assert int8.verdict == "within_bar"
    assert choose([reference, bf16_exact, int8], "fast") is bf16_exact
    clearly = _m("onnx", "int8", 0.20, 0.9942, 0.9906)            # 16 % faster: worth its quality
    assert choose([reference, bf16_exact, clearly], "fast") is clearly
    assert choose([reference, int8], "fast") is int8              # nothing exact close by


def expected_engine(admitted: list[dict[str, Any]]) -> str:
    """The fastest admitted engine (an exact one within 5 % of a faster approximate one instead),
    unless onnx fp32 (the rule's) is within 5 % of it."""
    fastest = min(admitted, key=lambda row: row["seconds"])
    exact = [row for row in admitted if row["verdict"] in ("reference", "exact")]
    if fastest["verdict"] == "within_bar" and exact:
        fastest_exact = min(exact, key=lambda row: row["seconds"])
        fastest = fastest_exact if fastest_exact["seconds"] <= fastest["seconds"] * 1.05 else fastest
    onnx = next((row for row in admitted if row["engine"] == "onnx:fp32"), None)
    return "onnx:fp32" if onnx is not None and onnx["seconds"] <= fastest["seconds"] * 1.05 else fastest["engine"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _registry(model_dir: Path, caps: CpuCapabilities = AVX2_ONLY, **selection: Any) -> Any:
    config = make_settings(model_dir.parent, embeddings_model_dir=model_dir).engine_config()
    chosen = dataclasses.replace(config.selection, **selection)
    return create_provider_registry(dataclasses.replace(config, selection=chosen), caps=caps)


def test_bare_id_follows_the_rule_until_measured_and_prefixes_pin(model_dir: Path) -> None:
    registry = _registry(model_dir / "rule")
    bare = registry.resolve(MODEL)
    assert (bare.provider.name, bare.info.model_id, bare.info.engine) == ("onnx", MODEL, "onnx:fp32")
    pinned = registry.resolve(f"huggingface:{MODEL}")
    assert (pinned.provider.name, pinned.info.engine) == ("huggingface", "huggingface:fp32")
    assert registry.resolve(f"onnx:{MODEL}@int8").info.engine == "onnx:int8"
    assert registry.engine_report()["models"][MODEL]["how"] == "rule"
    configured = _registry(model_dir / "pinned", engine="huggingface")
    assert configured.resolve(MODEL).provider.name == "huggingface"
    with pytest.raises(InvalidInput, match="variant"):
        registry.resolve(f"huggingface:{MODEL}@int4")
    asyncio.run(registry.aclose())
    asyncio.run(configured.aclose())


def test_choice_is_measured_on_the_real_engines_and_recorded(model_dir: Path) -> None:
    registry = _registry(model_dir)

    async def measure() -> dict[str, Any]:
        await registry.measure_engines(registry.bare_local_models())
        report: dict[str, Any] = registry.engine_report()["models"][MODEL]
        loaded = {name: registry.get(name).loaded_models() for name in ("huggingface", "onnx")}
        await registry.aclose()
        return report | {"loaded": loaded}

    report = asyncio.run(measure())
    rows = {row["engine"]: row for row in report["measurements"]}
    assert set(rows) == {"huggingface:fp32", "onnx:fp32"} and report["how"] == "measured"
    assert rows["huggingface:fp32"]["verdict"] == "reference"
    assert rows["onnx:fp32"]["verdict"] == "exact" and rows["onnx:fp32"]["cosine_min"] >= 0.9999
    fastest = min(rows.values(), key=lambda row: row["seconds"])
    onnx_row = rows["onnx:fp32"]
    expected = onnx_row if onnx_row["seconds"] <= fastest["seconds"] * 1.05 else fastest   # ties go to the rule
    assert report["chosen"] == expected["model"] and report["engine"] == expected["engine"]
    # Only the winner stays loaded.
    winner = report["engine"].split(":")[0]
    assert [name for name, ids in report["loaded"].items() if ids] == [winner]
    recorded = json.loads((model_dir / "engine_choice.json").read_text())
    assert [entry["chosen"] for entry in recorded.values()] == [report["chosen"]]

    # A later process on the same machine reuses the record: nothing is loaded or measured.
    later = _registry(model_dir)
    assert later.resolve(MODEL).provider.name == winner
    asyncio.run(later.measure_engines([MODEL]))
    assert later.engine_report()["models"][MODEL]["how"] == "measured"
    assert not later.get("huggingface").loaded_models() and not later.get("onnx").loaded_models()
    asyncio.run(later.aclose())
    # Another CPU (or library version, or setting) does not match the record: the rule applies.
    elsewhere = _registry(model_dir, caps=CpuCapabilities("another CPU", frozenset({"avx2"})))
    assert elsewhere.engine_report() is not None and elsewhere.bare_engine(MODEL) == f"onnx:{MODEL}"
    assert elsewhere.engine_report()["models"][MODEL]["how"] == "rule"
    asyncio.run(elsewhere.aclose())


def test_fast_precision_refuses_a_path_below_the_bar(model_dir: Path) -> None:
    """On a CPU reporting VNNI and BF16 (the flags given, the paths real: int8 and bf16 run on any
    x86 CPU), `fast` measures bf16 and int8 against fp32 and admits a path only within the bar:
    with a bar int8 cannot clear, it is refused (not even timed) and never the default. (The
    default bar admits it: see the exact-precision test, where it is `within_bar`.)"""
    bar, int8_admitted = (0.9999, 0.9999), False
    registry = _registry(model_dir / f"fast-{bar[0]}", caps=WITH_FAST_PATHS, precision="fast",
                         min_mean_cosine=bar[0], min_cosine=bar[1])
    asyncio.run(registry.measure_engines([MODEL]))
    report = registry.engine_report()["models"][MODEL]
    rows = {row["engine"]: row for row in report["measurements"]}
    assert set(rows) == {"huggingface:fp32", "onnx:fp32", "huggingface:bf16", "onnx:int8"}
    int8 = rows["onnx:int8"]
    assert 0.9 < int8["cosine_mean"] < 0.9999 and int8["cosine_min"] < 0.9999   # really int8
    assert int8["verdict"] == ("within_bar" if int8_admitted else "below_bar")
    assert 0.99 < rows["huggingface:bf16"]["cosine_mean"] < 1.0
    admitted = [row for row in rows.values() if row["verdict"] in ("reference", "exact", "within_bar")]
    assert report["engine"] == expected_engine(admitted)
    if not int8_admitted:
        assert report["chosen"] != f"onnx:{MODEL}@int8" and int8["seconds"] is None
        assert registry.resolve(MODEL).info.engine != "onnx:int8"
    asyncio.run(registry.aclose())


def test_exact_precision_admits_a_reduced_precision_only_when_it_is_exact(model_dir: Path) -> None:
    """EMBEDDINGS_PRECISION=exact on a CPU with VNNI and BF16: int8 (cosine ~0.99) is measured and
    refused; bf16 counts only if it reproduces fp32 within cosine 0.9999 on every text."""
    registry = _registry(model_dir / "exact-fast-cpu", caps=WITH_FAST_PATHS)
    asyncio.run(registry.measure_engines([MODEL]))
    report = registry.engine_report()["models"][MODEL]
    rows = {row["engine"]: row for row in report["measurements"]}
    assert rows["onnx:int8"]["verdict"] == "within_bar" and report["engine"] != "onnx:int8"
    bf16 = rows["huggingface:bf16"]
    assert bf16["verdict"] == ("exact" if bf16["cosine_min"] >= 0.9999 else "within_bar")
    admitted = [row for row in rows.values() if row["verdict"] in ("reference", "exact")]
    assert report["engine"] == expected_engine(admitted)
    assert registry.resolve(MODEL).info.model_id == MODEL    # stored under the bare id, whatever won
    asyncio.run(registry.aclose())


def test_an_exact_reduced_precision_keeps_the_bare_id_and_a_lossy_one_gets_its_own(model_dir: Path) -> None:
    """What a measured choice does to resolution: an exact bf16 winner runs the bare id in bf16,
    its vectors stored under the bare id; an int8 winner within the bar (fast) is `<id>@int8`."""
    exact = _registry(model_dir / "won-bf16", caps=WITH_FAST_PATHS)
    exact.chooser.decide(MODEL, [_m("huggingface", "fp32", 1.0, 1.0, 1.0), _m("onnx", "fp32", 0.6, 1.0, 1.0),
                                 _m("huggingface", "bf16", 0.3, 0.99998, 0.99993),
                                 _m("onnx", "int8", 0.2, 0.993, 0.98)])
    resolved = exact.resolve(MODEL)
    assert (resolved.provider.name, resolved.info.model_id, resolved.info.engine) == (
        "huggingface", MODEL, "huggingface:bf16")
    assert exact.resolve(f"huggingface:{MODEL}").info.engine == "huggingface:bf16"   # the same engine
    assert exact.resolve(f"huggingface:{MODEL}@fp32").info.engine == "huggingface:fp32"   # still pinnable
    batch = asyncio.run(resolved.provider.embed(MODEL, ["runs in bf16"]))
    assert batch.vectors.shape == (1, 384) and exact.get("huggingface").loaded_models() == [f"{MODEL}@bf16"]
    pinned = asyncio.run(resolved.provider.embed(f"{MODEL}@fp32", ["runs in bf16"]))   # a model of its own,
    assert sorted(exact.get("huggingface").loaded_models()) == [f"{MODEL}@bf16", f"{MODEL}@fp32"]   # in fp32
    plain = _registry(model_dir / "fp32-only")
    reference = asyncio.run(plain.get("huggingface").embed(MODEL, ["runs in bf16"]))
    asyncio.run(plain.aclose())
    assert np.allclose(pinned.vectors, reference.vectors, atol=1e-5)
    assert not np.allclose(batch.vectors, reference.vectors, atol=1e-5)
    asyncio.run(exact.aclose())

    lossy = _registry(model_dir / "won-int8", caps=WITH_FAST_PATHS, precision="fast")
    lossy.chooser.decide(MODEL, [_m("huggingface", "fp32", 1.0, 1.0, 1.0), _m("onnx", "fp32", 0.6, 1.0, 1.0),
                                 _m("onnx", "int8", 0.2, 0.993, 0.98)])
    resolved = lossy.resolve(MODEL)
    assert (resolved.provider.name, resolved.info.model_id, resolved.info.engine) == (
        "onnx", f"{MODEL}@int8", "onnx:int8")
    asyncio.run(lossy.aclose())


def test_bf16_variant_runs_under_autocast_close_to_fp32(model_dir: Path) -> None:
    registry = _registry(model_dir / "bf16")
    provider = registry.get("huggingface")
    texts = ["A quiet street after the rain.", "Quarterly revenue grew by twelve percent." * 4]

    async def both() -> tuple[np.ndarray, np.ndarray, list[str]]:
        fp32 = await provider.embed(MODEL, texts)
        bf16 = await provider.embed(f"{MODEL}@bf16", texts)
        loaded = provider.loaded_models()
        await registry.aclose()
        return fp32.vectors, bf16.vectors, loaded

    fp32, bf16, loaded = asyncio.run(both())
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert 0.99 < cos.min() < 0.99999, cos    # close, and not the fp32 path in disguise
    assert sorted(loaded) == [MODEL, f"{MODEL}@bf16"]


def test_selection_settings_reach_the_engine_config(tmp_path: Path) -> None:
    config = make_settings(tmp_path, embeddings_engine="onnx", embeddings_precision="fast",
                           embeddings_quality_min_mean_cosine=0.995, embeddings_quality_min_cosine=0.98).engine_config()
    assert config.selection == EngineSelectionConfig("onnx", "fast", 0.995, 0.98)
