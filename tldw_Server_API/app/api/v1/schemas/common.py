"""Field types every request model and query parameter shares. The integer rule: every integer a
caller sends fits the stores' signed 64-bit integers (SQLite, PostgreSQL bigint, Chroma), so no
value reaches a driver that would overflow there (a 500); `tests/app/api/v1/test_wire_rules.py`
checks that every integer in the OpenAPI schema carries bounds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field, StrictInt

from tldw_Server_API.app.core.wire import INT64_MAX, INT64_MIN

WireInt = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
MediaIdPath = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX)]
Offset = Annotated[int, Query(ge=0, le=INT64_MAX, description="Items to skip.")]
