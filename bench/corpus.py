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


def _shingles(text: str, size: int = 8) -> set[str]:
    words = text.split()
    return {" ".join(words[i:i + size]) for i in range(0, max(0, len(words) - size), 3)}


def long_documents(min_words: int = 1000, limit: int = 40) -> list[tuple[str, str]]:
    """(name, text) of the installed packages' long descriptions with at least `min_words` words:
    real, long, varied documents (prose, lists, tables), paragraphs kept, code blocks, markup and
    links removed, near-copies of an earlier one (a fork's README) skipped. Deterministic for a
    given set of installed packages; at most `limit`."""
    out: list[tuple[str, str]] = []
    seen: list[set[str]] = []
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower()):
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
        if not isinstance(body, str):
            continue
        text = re.sub(r"```.*?```|<[^>]+>|https?://\S+|\.\. [a-z-]+::.*", " ", body, flags=re.S)
        text = "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        name = dist.metadata.get("Name") or "unknown"
        shingles = _shingles(text)
        if len(text.split()) < min_words or any(len(shingles & other) > 0.2 * len(shingles) for other in seen):
            continue
        out.append((name, text))
        seen.append(shingles)
        if len(out) >= limit:
            break
    return out
