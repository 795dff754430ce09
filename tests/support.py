"""Test helpers importable from any test module (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings
from tldw_Server_API.app.main import create_app

ADMIN_KEY = "test-admin-key-0123456789"
MODEL = BUNDLED_MODEL_ID


def require_service(reason: str) -> None:
    """Skip locally, fail in CI (REQUIRE_SERVICES=1), when something a test needs is missing."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service/resource missing: {reason}")
    pytest.skip(reason)


def make_settings(data_dir: Path, tiktoken: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tldw_data_dir": data_dir,
        "single_user_api_key": ADMIN_KEY,
        "tiktoken_cache_dir": tiktoken,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class SteppingClock:
    """An injected clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)
