"""Which local engine a bare model id runs on (EMBEDDINGS_ENGINE, EMBEDDINGS_PRECISION).

A client that sends `sentence-transformers/all-MiniLM-L6-v2` means the model, not an engine; a
`huggingface:` or `onnx:` prefix pins one. For a bare id of a local model the candidates are torch
fp32 (`huggingface`, the reference), onnxruntime fp32 (`onnx`, encoder models on the CPU) and the
reduced-precision paths this CPU has hardware for: bf16 (torch autocast; AVX-512 BF16 / AMX) and
int8 (onnxruntime; VNNI / AMX). Each is measured on the calibration texts: its cosine to the
reference's vectors on every text and its time for the set, served as a server serves it: the
texts in one batch and each as a lone request (an engine fast on big batches but slow on a
single short text, as torch is on some CPUs, must not win for both). A candidate is *exact* when every
cosine is >= `EXACT_COSINE`; with EMBEDDINGS_PRECISION=exact only exact candidates are admitted
(an exact bf16 path runs the bare id, its vectors stored under the bare id); with `fast` a
reduced-precision path within the quality bar (mean and min cosine) is admitted too, stored under
its own id (`<id>@int8`). A path below the bar is refused and never becomes the default. The
fastest admitted candidate wins, except that the rule's engine keeps a tie (within TIE_MARGIN).
The choice is measured at start-up (with the preload) and recorded in
`<model dir>/engine_choice.json` per model revision, CPU, library versions and settings, so a
restart reuses it. Until a model is measured, the documented rule applies: onnx fp32 where it is
a candidate, else huggingface.

`candidates`, `verdict`, `choose` and `measure` (given an encode function) are pure;
`EngineChooser` holds the choices and their record.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from loguru import logger

from tldw_Server_API.app.core.config import EngineSelectionConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.calibration import CALIBRATION_TEXTS
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.cpu_capabilities import CpuCapabilities

EXACT_COSINE = 0.9999          # an "exact" engine agrees with the reference this closely on every text
Precision = Literal["fp32", "bf16", "int8"]
Verdict = Literal["reference", "exact", "within_bar", "below_bar", "failed"]


@dataclass(frozen=True)
class QualityBar:
    """What a reduced-precision path must keep against fp32 to be offered as a default."""

    mean: float = 0.99
    min: float = 0.975

    def admits(self, cosine_mean: float, cosine_min: float) -> bool:
        return cosine_mean >= self.mean and cosine_min >= self.min


@dataclass(frozen=True)
class Candidate:
    provider: str          # "huggingface" | "onnx"
    model_id: str          # as the provider takes it: `<id>` (its exact default), `<id>@int8`, `<id>@bf16`
    precision: Precision

    @property
    def spec(self) -> str:
        return f"{self.provider}:{self.model_id}"

    @property
    def engine(self) -> str:
        return f"{self.provider}:{self.precision}"

    @property
    def explicit_id(self) -> str:
        """The model id naming this precision whatever a bare id is set to run (`run_as`)."""
        return f"{self.model_id.partition('@')[0]}@{self.precision}"


@dataclass
class Measurement:
    candidate: Candidate
    seconds: float | None = None          # best time for the calibration workload
    cosine_mean: float | None = None      # to the reference (torch fp32) vectors
    cosine_min: float | None = None
    verdict: Verdict = "failed"
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {"engine": self.candidate.engine, "model": self.candidate.spec,
                "seconds": None if self.seconds is None else round(self.seconds, 4),
                "cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
                "verdict": self.verdict, "error": self.error}


@dataclass(frozen=True)
class EngineFacts:
    """What decides the candidates of one model on this server."""

    device: str                    # torch device of the huggingface provider
    onnx_available: bool           # onnxruntime importable
    onnx_bare_variant: str         # EMBEDDINGS_ONNX_QUANTIZE: what `onnx:<id>` runs
    encoder: bool                  # an encoder the ONNX export handles (not a left-padded decoder)


def candidates(model_id: str, facts: EngineFacts, caps: CpuCapabilities) -> list[Candidate]:
    """The reference first, then the other exact engine, then the reduced-precision paths this CPU
    has hardware for (bf16: AVX-512 BF16 / AMX; int8: VNNI / AMX). EMBEDDINGS_PRECISION does not
    change the list, only what is admitted (`choose`): with `exact` a reduced-precision path must be
    as exact as an fp32 engine. A CPU without those instructions has the fp32 engines only."""
    on_cpu = facts.device == "cpu"
    onnx = on_cpu and facts.onnx_available and facts.encoder
    out = [Candidate("huggingface", model_id, "fp32")]
    if onnx and facts.onnx_bare_variant == "fp32":
        out.append(Candidate("onnx", model_id, "fp32"))
    if on_cpu and caps.bf16:
        out.append(Candidate("huggingface", f"{model_id}@bf16", "bf16"))
    if onnx and caps.int8_dot:
        out.append(Candidate("onnx", f"{model_id}@int8", "int8"))
    return out


def rule(options: Sequence[Candidate]) -> Candidate:
    """The documented choice before (or without) a measurement: onnx fp32 where it is a
    candidate (1.6-2.7x sentence-transformers against torch's 1.4-2.1x on the machines measured,
    FACTS.md and bench/README.md), else the torch reference. Never a reduced precision: that
    needs its cosines measured first."""
    return next((c for c in options if c.provider == "onnx" and c.precision == "fp32"), options[0])


def cosines(reference: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    got = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray((ref * got).sum(axis=1), dtype=np.float64)


def verdict(candidate: Candidate, cosine_mean: float, cosine_min: float, bar: QualityBar) -> Verdict:
    if candidate.precision == "fp32" and candidate.provider == "huggingface":
        return "reference"
    if cosine_min >= EXACT_COSINE:
        return "exact"
    if candidate.precision != "fp32" and bar.admits(cosine_mean, cosine_min):
        return "within_bar"
    return "below_bar"   # an fp32 engine that is not exact is as unusable as a path below the bar


TIE_MARGIN = 0.05   # a candidate must beat the rule's engine (or an approximate one an exact one) by more than this


def _ties(holder: Measurement, faster: Measurement) -> bool:
    """`holder` is within TIE_MARGIN of `faster`: it keeps its place."""
    return (holder.seconds or 0.0) <= (faster.seconds or 0.0) * (1 + TIE_MARGIN)


def choose(measurements: Sequence[Measurement], precision: Literal["exact", "fast"],
           prefer: Candidate | None = None) -> Measurement:
    """The fastest admitted measurement: exact ones (and, with `fast`, those within the bar);
    the reference when nothing else was admitted or timed. A path within the bar must beat the
    fastest exact one by more than TIE_MARGIN: it trades quality for speed, and a tie buys none
    (on an Intel Xeon with AMX, onnx int8 timed 3 % faster than exact torch bf16 on the
    calibration texts and ran 20 % slower on the benchmark corpus). `prefer` (the rule's engine)
    keeps a tie (within TIE_MARGIN): on a machine where two engines run alike, noise must not
    flip the choice from one start to the next."""
    admitted = {"reference", "exact"} | ({"within_bar"} if precision == "fast" else set())
    timed = [m for m in measurements if m.verdict in admitted and m.seconds is not None]
    if timed:
        best = min(timed, key=lambda m: m.seconds or 0.0)
        exact = [m for m in timed if m.verdict in ("reference", "exact")]
        if best.verdict == "within_bar" and exact:
            fastest_exact = min(exact, key=lambda m: m.seconds or 0.0)
            if _ties(fastest_exact, best):
                best = fastest_exact
        preferred = next((m for m in timed if m.candidate == prefer), None)
        if preferred is not None and _ties(preferred, best):
            return preferred
        return best
    return next((m for m in measurements if m.verdict == "reference"), measurements[0])


# Encodes texts with a candidate's own engine (no batcher, no HTTP); returns (n, d) vectors.
EncodeFn = Callable[[Candidate, Sequence[str]], np.ndarray]


def measure(options: Sequence[Candidate], encode: EncodeFn, bar: QualityBar,
            texts: Sequence[str] = CALIBRATION_TEXTS, rounds: int = 3, repeat: int = 4) -> list[Measurement]:
    """Vectors of every candidate against the first (the reference), then `rounds` interleaved
    timings (best kept) of `repeat` copies of the texts in one batch plus each text alone: drifts
    of a shared machine hit all candidates alike. A candidate that fails (export, load) is
    recorded as failed."""
    results = [Measurement(c) for c in options]
    reference: np.ndarray | None = None
    for m in results:
        try:
            vectors = np.asarray(encode(m.candidate, texts), dtype=np.float32)
        except Exception as exc:  # an engine that cannot run this model is not a candidate
            m.error = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("engine choice: {} failed: {}", m.candidate.spec, m.error)
            continue
        if reference is None:
            reference = vectors
        cos = cosines(reference, vectors)
        m.cosine_mean, m.cosine_min = round(float(cos.mean()), 6), round(float(cos.min()), 6)
        m.verdict = verdict(m.candidate, m.cosine_mean, m.cosine_min, bar)
    workload = list(texts) * repeat
    for _ in range(rounds):
        for m in results:
            if m.verdict in ("failed", "below_bar"):
                continue
            start = time.perf_counter()
            encode(m.candidate, workload)
            for text in texts:
                encode(m.candidate, [text])
            elapsed = time.perf_counter() - start
            m.seconds = elapsed if m.seconds is None else min(m.seconds, elapsed)
    return results


@functools.cache
def library_versions() -> str:
    from importlib import metadata

    versions = []
    for name in ("torch", "onnxruntime", "transformers"):
        try:
            versions.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name}=none")
    return ",".join(versions)


@dataclass
class Choice:
    model_id: str
    chosen: str                        # the spec a bare id resolves to
    engine: str                        # provider:precision
    how: Literal["configured", "rule", "measured"]
    variant: str | None = None         # a reduced precision found exact: the bare id runs it, stored as the bare id
    measurements: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""
    measured_at: float | None = None


class ChoiceStore:
    """Recorded measurements, one JSON file, written atomically; unreadable means empty."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, key: str, choice: Choice) -> None:
        if self.path is None:
            return
        data = self.load()
        data[key] = asdict(choice)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:   # a read-only model dir: the choice holds for this process only
            logger.warning("engine choice: could not record it in {}: {}", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


class EngineChooser:
    """The engine of each bare local model id: configured, recorded/measured, or the rule."""

    def __init__(self, config: EngineSelectionConfig, caps: CpuCapabilities, store: ChoiceStore,
                 facts: Callable[[str], EngineFacts], revision: Callable[[str], str],
                 settings_tag: str = "") -> None:
        self.config = config
        self.bar = QualityBar(config.min_mean_cosine, config.min_cosine)
        self.caps = caps
        self._store = store
        self._facts = facts
        self._revision = revision
        self._settings_tag = settings_tag
        self._choices: dict[str, Choice] = {}

    def options(self, model_id: str) -> list[Candidate]:
        return candidates(model_id, self._facts(model_id), self.caps)

    def key(self, model_id: str) -> str:
        """What a recorded measurement must match to be reused."""
        return "|".join((model_id, self._revision(model_id), self.caps.fingerprint(), library_versions(),
                         self.config.precision, f"bar={self.bar.mean},{self.bar.min}",
                         self._settings_tag))

    def choice(self, model_id: str) -> Choice:
        """The engine a bare id runs on now (sync: never measures, reads the record once)."""
        known = self._choices.get(model_id)
        if known is not None:
            return known
        options = self.options(model_id)
        if self.config.engine != "auto":   # the configured engine where it can run this model, else the reference
            pinned = next((c for c in options if c.provider == self.config.engine and c.precision == "fp32"),
                          options[0])
            return self._remember(Choice(model_id, pinned.spec, pinned.engine, "configured"))
        recorded = self._store.load().get(self.key(model_id))
        if recorded and recorded.get("engine") in {c.engine for c in options}:
            return self._remember(Choice(**{**recorded, "how": "measured"}))
        first = rule(options)
        return self._remember(Choice(model_id, first.spec, first.engine, "rule"))   # until measured

    def _remember(self, choice: Choice) -> Choice:
        self._choices[choice.model_id] = choice
        return choice

    def needs_measuring(self, model_id: str) -> bool:
        return self.choice(model_id).how == "rule" and len(self.options(model_id)) > 1

    def decide(self, model_id: str, measurements: Sequence[Measurement]) -> Choice:
        """Record what the measurements chose (and why the others were not)."""
        best = choose(measurements, self.config.precision, prefer=rule([m.candidate for m in measurements]))
        key = self.key(model_id)
        won = best.candidate
        # An exact winner keeps the bare id (its vectors are the reference's within EXACT_COSINE, so
        # they share its collection and cache); a reduced precision merely within the bar is
        # stored under its own id (`<id>@int8`), never mixed with fp32 vectors.
        exact_variant = won.precision != "fp32" and best.verdict == "exact"
        chosen = f"{won.provider}:{model_id}" if exact_variant else won.spec
        choice = Choice(model_id, chosen, won.engine, "measured", variant=won.precision if exact_variant else None,
                        measurements=[m.row() for m in measurements], key=key, measured_at=time.time())
        for m in measurements:
            if m.verdict == "below_bar":
                logger.warning("engine choice: {} refused as a default for {}: cosine mean {} / min {} below the "
                               "bar {} / {}", m.candidate.spec, model_id, m.cosine_mean, m.cosine_min,
                               self.bar.mean, self.bar.min)
        logger.info("engine choice: {} runs on {} ({})", model_id, choice.chosen,
                    ", ".join(f"{r['engine']} {r['seconds']} s cos>={r['cosine_min']} {r['verdict']}"
                              for r in choice.measurements))
        self._store.save(key, choice)
        return self._remember(choice)

    def report(self) -> dict[str, Any]:
        return {"mode": self.config.engine, "precision": self.config.precision,
                "quality_bar": asdict(self.bar), "cpu": self.caps.summary(),
                "models": {m: asdict(c) for m, c in self._choices.items()}}
