"""What the CPU offers for reduced-precision inference, read from `/proc/cpuinfo` flags: AVX-512
VNNI / AVX-VNNI / AMX-INT8 (int8 dot products: onnxruntime's int8 MatMul kernels use them), and
AVX-512 BF16 / AMX-BF16 (bf16 matmuls: torch's oneDNN kernels use them). Without these
instructions the reduced-precision paths still run, emulated or on AVX2, but are not offered as
fast paths. Parsing is pure (`from_cpuinfo`); `detect()` reads the file once.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", *INT8_FLAGS, *BF16_FLAGS, "amx_tile")


@dataclass(frozen=True)
class CpuCapabilities:
    model_name: str
    flags: frozenset[str]

    @property
    def int8_dot(self) -> bool:
        """Hardware int8 dot products (VNNI or AMX): the int8 path is a fast path here."""
        return any(flag in self.flags for flag in INT8_FLAGS)

    @property
    def bf16(self) -> bool:
        """Hardware bf16 matmuls (AVX-512 BF16 or AMX): the bf16 path is a fast path here."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    def summary(self) -> dict[str, object]:
        """What benchmark results and the engine report record about the CPU."""
        return {"model_name": self.model_name, "flags": sorted(f for f in REPORTED_FLAGS if f in self.flags),
                "int8_dot": self.int8_dot, "bf16": self.bf16}

    def fingerprint(self) -> str:
        """Changes when the model name or a relevant flag does (a recorded measurement is stale)."""
        text = self.model_name + "|" + ",".join(sorted(f for f in REPORTED_FLAGS if f in self.flags))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def from_cpuinfo(text: str) -> CpuCapabilities:
    """The first processor's model name and flags from `/proc/cpuinfo` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep:
            continue
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuCapabilities(model or platform.processor() or platform.machine(), flags)


@functools.cache
def detect() -> CpuCapabilities:
    """This machine's capabilities (empty flags where /proc/cpuinfo is unreadable: no fast path)."""
    try:
        return from_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return CpuCapabilities(platform.processor() or platform.machine(), frozenset())
