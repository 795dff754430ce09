"""The one rule for text and ids that arrive off the wire, applied at the API boundary.

JSON bodies and JSON-valued parameters are decoded by `loads_json` (orjson: strict UTF-8, so a lone
UTF-16 surrogate such as `"\\ud800"` is refused, as are NaN and Infinity, which are not JSON). Text
that arrives another way is decoded from bytes (paths, queries, form fields), which cannot carry a
lone surrogate. So what passes is Unicode every store, cache key and log line can encode; integers
a store keeps must fit `fits_int64`. Pure: no I/O, no FastAPI.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

INT64_MIN = -(2**63)       # every integer the stores hold is a signed 64-bit one (SQLite, bigint, Chroma)
INT64_MAX = 2**63 - 1
JSONDecodeError = json.JSONDecodeError   # orjson's error subclasses it (FastAPI catches this class)


def loads_json(raw: bytes | str) -> Any:
    """Decode JSON text strictly; raises `JSONDecodeError` whose `msg` is safe to show."""
    return orjson.loads(raw)


def json_error_message(reason: str) -> str:
    """What to tell the caller about a body that did not decode, from the decoder's `msg` (which
    names a position, never the input itself)."""
    if "surrogate" in reason:
        return ("the request body is not valid JSON text: a string holds a lone UTF-16 surrogate "
                "(\\ud800-\\udfff without its pair), which is not Unicode")
    return f"the request body is not valid JSON: {reason}" if reason else "the request body is not valid JSON"


def fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX
