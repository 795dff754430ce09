"""The metadata-filter language shared by every vector store: parsed once, translated per adapter.

Pure: imports only the standard library and core errors. `parse_where` validates a where dict into
a small tree (`Condition`, `AllOf`, `AnyOf`); `to_chroma_where`, `to_sql` and `matches` translate
or evaluate it, so Chroma, pgvector and the in-memory stub agree on one meaning. No I/O here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.wire import fits_int64

Scalar: TypeAlias = str | int | float | bool
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
RANGES = ("$gt", "$gte", "$lt", "$lte")
LISTS = ("$in", "$nin")
MAX_DEPTH = 8
MAX_LIST = 1000
_SQL_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


@dataclass(frozen=True)
class Condition:
    """`field <op> value`; `value` is a tuple for `$in` / `$nin`."""

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class AllOf:
    children: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Filter, ...]


Filter: TypeAlias = Condition | AllOf | AnyOf


def _bad(message: str) -> InvalidInput:
    return InvalidInput(f"invalid metadata filter: {message}", param="where")


def _kind(value: object) -> str:
    """'bool' | 'number' | 'string'; anything else is not a filter value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not fits_int64(value):
            raise _bad("integers must fit in 64 bits")
        return "number"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad("numbers must be finite")
        return "number"
    if isinstance(value, str):
        return "string"
    raise _bad(f"values must be strings, numbers or booleans, got {type(value).__name__}")


def validate_field_name(field: object) -> str:
    if not isinstance(field, str) or not FIELD_RE.match(field):
        raise _bad(f"field names match {FIELD_RE.pattern}, got {field!r}")
    return field


def _parse_operator(field: str, op: str, operand: object) -> Condition:
    if op in LISTS:
        if not isinstance(operand, (list, tuple)) or not operand or len(operand) > MAX_LIST:
            raise _bad(f"{op} on {field!r} needs a non-empty list of at most {MAX_LIST} values")
        kinds = {_kind(item) for item in operand}
        if len(kinds) > 1:
            raise _bad(f"{op} on {field!r} mixes value types {sorted(kinds)}")
        return Condition(field, op, tuple(operand))
    if op not in COMPARISONS:
        raise _bad(f"unknown operator {op!r} on {field!r} (use {', '.join(COMPARISONS + LISTS)})")
    kind = _kind(operand)
    if op in RANGES and kind != "number":
        raise _bad(f"{op} on {field!r} needs a number, got {type(operand).__name__}")
    return Condition(field, op, operand)  # type: ignore[arg-type]


def _parse_field(field: str, spec: object) -> Condition:
    validate_field_name(field)
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise _bad(f"the condition on {field!r} needs exactly one operator, got {len(spec)}")
        ((op, operand),) = spec.items()
        return _parse_operator(field, str(op), operand)
    _kind(spec)
    return Condition(field, "$eq", spec)  # type: ignore[arg-type]


def _parse(where: object, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise _bad(f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(where, Mapping) or not where:
        raise _bad("each filter is a non-empty object")
    parts: list[Filter] = []
    for key, spec in where.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, (list, tuple)) or not spec:
                raise _bad(f"{key} needs a non-empty list of filters")
            children = tuple(_parse(child, depth + 1) for child in spec)
            parts.append(AllOf(children) if key == "$and" else AnyOf(children))
        elif isinstance(key, str) and key.startswith("$"):
            raise _bad(f"unknown logical operator {key!r} (use $and, $or)")
        else:
            parts.append(_parse_field(key, spec))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def parse_where(where: Mapping[str, Any] | None) -> Filter | None:
    """Validate a where dict. `None` or `{}` means no filter. Several keys at one level are ANDed."""
    if where is None or (isinstance(where, Mapping) and not where):
        return None
    return _parse(where, 0)


# --- translations ----------------------------------------------------------------------------

def to_chroma_where(node: Filter) -> dict[str, Any]:
    """Chroma's where dialect: one key per level, `$and`/`$or` with two or more children, and
    `$in` lists of one type (mixed ints and floats become floats, which Chroma compares by value)."""
    if isinstance(node, Condition):
        value: Any = node.value
        if isinstance(value, tuple):
            value = list(value)
            if any(isinstance(v, float) for v in value):
                value = [float(v) for v in value]
        return {node.field: {node.op: value}}
    children = [to_chroma_where(child) for child in node.children]
    if len(children) == 1:
        return children[0]
    return {"$and" if isinstance(node, AllOf) else "$or": children}


def _equal(actual: object, expected: Scalar) -> bool:
    if _kind_or_none(actual) != _kind(expected):
        return False
    return actual == expected


def _kind_or_none(value: object) -> str | None:
    try:
        return _kind(value)
    except InvalidInput:
        return None


def _condition_matches(cond: Condition, metadata: Mapping[str, Any]) -> bool:
    present = cond.field in metadata
    actual = metadata.get(cond.field)
    if cond.op in ("$eq", "$ne"):
        hit = present and _equal(actual, cond.value)  # type: ignore[arg-type]
        return hit if cond.op == "$eq" else not hit
    if cond.op in LISTS:
        hit = present and any(_equal(actual, v) for v in cond.value)  # type: ignore[union-attr]
        return hit if cond.op == "$in" else not hit
    if not present or _kind_or_none(actual) != "number":
        return False
    a, b = float(actual), float(cond.value)  # type: ignore[arg-type]
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[cond.op]


def matches(node: Filter | None, metadata: Mapping[str, Any] | None) -> bool:
    """Evaluate a parsed filter on one record's metadata, with Chroma's semantics: `$ne`/`$nin`
    match records that lack the field; ranges match numbers only; booleans are not numbers."""
    if node is None:
        return True
    metadata = metadata or {}
    if isinstance(node, Condition):
        return _condition_matches(node, metadata)
    if isinstance(node, AllOf):
        return all(matches(child, metadata) for child in node.children)
    return any(matches(child, metadata) for child in node.children)


def to_sql(node: Filter, column: str = "metadata") -> tuple[str, list[Any]]:
    """A SQL boolean over a JSONB column, with `%s` placeholders and their parameters. Field
    names travel as parameters, never as SQL text; `column` is a trusted constant."""
    if isinstance(node, Condition):
        return _condition_sql(node, column)
    params: list[Any] = []
    parts: list[str] = []
    for child in node.children:
        text, child_params = to_sql(child, column)
        parts.append(f"({text})")
        params.extend(child_params)
    joiner = " AND " if isinstance(node, AllOf) else " OR "
    return joiner.join(parts), params


def _condition_sql(cond: Condition, column: str) -> tuple[str, list[Any]]:
    if cond.op in ("$eq", "$ne"):
        # Containment compares JSON values by type: 1 = 1.0, but true <> 1 and "1" <> 1.
        text = f"{column} @> %s::jsonb"
        params: list[Any] = [json.dumps({cond.field: cond.value})]
        return (text if cond.op == "$eq" else f"NOT ({text})"), params
    if cond.op in LISTS:
        values = [json.dumps(v) for v in cond.value]  # type: ignore[union-attr]
        text = f"COALESCE(({column} -> %s) = ANY(%s::jsonb[]), false)"
        return (text if cond.op == "$in" else f"NOT {text}"), [cond.field, values]
    # CASE guards the cast: only JSON numbers are compared, strings and booleans never match.
    text = (f"COALESCE((CASE WHEN jsonb_typeof({column} -> %s) = 'number' "
            f"THEN ({column} ->> %s)::float8 END) {_SQL_RANGE[cond.op]} %s, false)")
    return text, [cond.field, cond.field, float(cond.value)]  # type: ignore[arg-type]
