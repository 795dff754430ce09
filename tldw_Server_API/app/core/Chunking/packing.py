"""Sentence-aware packing of a text into chunks of at most `max_tokens` tokens (the `tokens` method).

Whole sentences are packed greedily; a cut prefers a paragraph end in a chunk's last quarter; a
sentence longer than the budget is cut at token boundaries; neighbours share whole trailing
sentences of at most `overlap` tokens. Token counts come from the caller's token spans (the model's
own tokenizer), so a chunk never holds more than `max_tokens` of them. Pure: no I/O, no model.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]
PARAGRAPH_PREFERENCE = 0.75   # cut at a paragraph end when one lies past this share of the budget


@dataclass(frozen=True)
class Unit:
    """A sentence (or a budget-sized piece of a long one): its tokens [first, last) and characters."""

    first: int
    last: int
    start: int
    end: int
    opens_paragraph: bool

    @property
    def tokens(self) -> int:
        return self.last - self.first


def sentence_units(text: str, sentences: Sequence[Span], tokens: Sequence[Span], max_tokens: int) -> list[Unit]:
    """Map sentence spans onto token indexes; split any sentence longer than `max_tokens`."""
    starts = [start for start, _ in tokens]
    ends = _running_ends(tokens)
    units: list[Unit] = []
    previous_end = 0
    for s_start, s_end in sentences:
        first, last = bisect_left(starts, s_start), bisect_left(starts, s_end)
        if first == last:
            continue   # no token starts inside (cannot happen for non-blank text; be safe)
        opens = "\n\n" in text[previous_end:s_start].replace("\r", "") or "\u2029" in text[previous_end:s_start]
        previous_end = s_end
        for piece in range(first, last, max_tokens):
            stop = min(piece + max_tokens, last)
            start = s_start if piece == first else tokens[piece][0]
            end = s_end if stop == last else ends[stop - 1]
            units.append(Unit(piece, stop, start, end, opens and piece == first))
    return units


def pack_units(units: Sequence[Unit], max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Chunks as [first unit, last unit) index ranges: each at most `max_tokens` tokens, in order,
    covering every unit; consecutive ranges share trailing units of at most `overlap` tokens."""
    ranges: list[tuple[int, int]] = []
    count = len(units)
    first = 0
    while first < count:
        stop, used = first, 0
        while stop < count and used + units[stop].tokens <= max_tokens:
            used += units[stop].tokens
            stop += 1
        stop = max(stop, first + 1)   # a unit never exceeds the budget; guard progress anyway
        if stop < count:
            stop = _paragraph_cut(units, first, stop, max_tokens)
        ranges.append((first, stop))
        if stop == count:
            break
        back, shared = stop, 0
        while back - 1 > first and shared + units[back - 1].tokens <= overlap:
            shared += units[back - 1].tokens
            back -= 1
        first = back
    return ranges


def _paragraph_cut(units: Sequence[Unit], first: int, stop: int, max_tokens: int) -> int:
    """The last paragraph start in the chunk's final quarter, else `stop`."""
    floor = units[first].first + PARAGRAPH_PREFERENCE * max_tokens
    for index in range(stop - 1, first, -1):
        if units[index].first < floor:
            break
        if units[index].opens_paragraph:
            return index
    return stop


def _running_ends(spans: Sequence[Span]) -> list[int]:
    ends: list[int] = []
    furthest = 0
    for _, end in spans:
        furthest = max(furthest, end)
        ends.append(furthest)
    return ends
