"""A deterministic corpus of real English for benchmarks, built from text already on the machine
(no download): the license texts in /usr/share/common-licenses and the long descriptions of the
installed Python packages. Passages mix three lengths (~16, ~64 and ~200 tokens), as FACTS.md's."""

from __future__ import annotations

import random
import re
from importlib import metadata
from pathlib import Path

LENGTHS_IN_WORDS = (12, 48, 150)


def _source_words() -> list[str]:
    texts = [p.read_text(errors="ignore") for p in sorted(Path("/usr/share/common-licenses").glob("*")) if p.is_file()]
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata.get("Name") or ""):
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
        if isinstance(body, str):
            texts.append(re.sub(r"```.*?```|<[^>]+>|https?://\S+", " ", body, flags=re.S))
    words = " ".join(texts).split()
    return [w for w in words if re.search(r"[A-Za-z]", w) and len(w) < 30]


def build_corpus(passages: int, seed: int = 0) -> list[str]:
    words = _source_words()
    rnd = random.Random(seed)
    out = []
    for _ in range(passages):
        size = rnd.choice(LENGTHS_IN_WORDS)
        start = rnd.randrange(0, len(words) - size)
        out.append(" ".join(words[start:start + size]))
    return out
