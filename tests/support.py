"""Test helpers importable from any test module (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings
from tldw_Server_API.app.core.Embeddings.input_processing import parse_model_name
from tldw_Server_API.app.main import create_app

ADMIN_KEY = "test-admin-key-0123456789"
MODEL = BUNDLED_MODEL_ID
# The server's default model (media jobs, RAG queries, vector stores): the bundled model's bare id,
# stored under that id whichever exact engine runs it. Tests preload nothing, so no engine choice is
# measured and the documented rule (onnx fp32 where it can run) is the engine its jobs record.
DEFAULT_MODEL_ID = parse_model_name(str(Settings.model_fields["embeddings_default_model"].default)).model_id
DEFAULT_PROVIDER = "onnx"


def require_service(reason: str) -> None:
    """Skip locally, fail in CI (REQUIRE_SERVICES=1), when something a test needs is missing."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service/resource missing: {reason}")
    pytest.skip(reason)


# Chunk sizes counted in words (the pre-token default): for tests whose expected chunk counts are in words.
WORD_CHUNKING = {"chunking_method": "words", "chunking_max_size": 1000, "chunking_overlap": 200}


def make_settings(data_dir: Path, tiktoken: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tldw_data_dir": data_dir,
        "single_user_api_key": ADMIN_KEY,
        "tiktoken_cache_dir": tiktoken,
        "log_level": "WARNING",
        "preload_embedding_models": [],      # models load on first use in tests (a warmup test asks for one)
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
        self.settings = settings
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


def write_keys_file(directory: Path, users: Mapping[str, str], admins: Mapping[str, str] | None = None,
                    tiers: Mapping[str, str] | None = None) -> Path:
    """An `API_KEYS_FILE` in `directory`: user id -> key, plain users and admins; `tiers` names
    some users' tier (the others get the default tier)."""
    entries: list[dict[str, Any]] = [{"key": key, "user_id": uid, "roles": ["user"]} for uid, key in users.items()]
    for entry in entries:
        if tiers and entry["user_id"] in tiers:
            entry["tier"] = tiers[entry["user_id"]]
    entries += [{"key": key, "user_id": uid, "roles": ["user", "admin"]} for uid, key in (admins or {}).items()]
    path = directory / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}), encoding="utf-8")
    return path


def assert_openai_error(
    response: Any, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The response is `status` with OpenAI's error shape, a message, no traceback, and the given
    code and param; returns the `error` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return dict(body["error"])


def key_of(user_id: str) -> str:
    """The API key the multi-user test apps give `user_id`."""
    return f"key-{user_id}-0123456789"


@dataclass
class Caller:
    """One user's view of a TestClient app: every request carries that user's key."""

    client: TestClient
    user_id: str

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key_of(self.user_id)}", **kwargs.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)

    def store(self) -> Any:
        """This user's vector store, straight from the app's services."""
        return self.client.app.state.services.storage.vector_stores.for_user(self.user_id)  # type: ignore[attr-defined]


def wait_for_jobs(client: TestClient) -> None:
    """Until the in-process executor has run every queued job (on the app's own event loop)."""
    manager = client.app.state.services.media_embeddings.manager  # type: ignore[attr-defined]

    async def drained() -> None:
        await asyncio.wait_for(manager.wait_idle(), timeout=60)

    assert client.portal is not None
    client.portal.call(drained)


@functools.cache
def real_texts() -> tuple[str, ...]:
    """Long descriptions of the installed packages (over 2,000 characters each): real prose, code
    and tables already on the machine, for tests that need long real text."""
    from importlib import metadata

    texts = []
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata.get("Name") or ""):
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""   # type: ignore[attr-defined]
        if isinstance(body, str) and len(body) > 2000:
            texts.append(body)
    assert len(texts) > 20
    return tuple(texts)


def long_document(words: int) -> str:
    """`words` words of real text (from `real_texts`), deterministic."""
    pool = " ".join(real_texts()).split()
    return " ".join(pool[1000:1000 + words])


def encrypted_pdf(pdf: bytes) -> bytes:
    """`pdf` encrypted with a user password (pypdf, RC4-128: no crypto library needed)."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def image_only_pdf(pages: int = 2) -> bytes:
    """A valid PDF of blank pages: no text layer, as a scan without OCR."""
    import io

    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def api_routes(routes: list[Any]) -> list[Any]:
    """The app's API routes (`APIRoute`), through FastAPI's included-router wrappers."""
    from fastapi.routing import APIRoute

    found: list[Any] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found += api_routes(list(included.routes))
        elif isinstance(route, APIRoute):
            found.append(route)
    return found


class ServerProcess:
    """`python -m tldw_Server_API` as its own process on a free port (to be SIGKILLed), the
    single-user admin key, `extra` environment variables on top."""

    def __init__(self, data_dir: Path, tiktoken: Path, **extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "TLDW_DATA_DIR": str(data_dir), "TLDW_PORT": str(self.port),
               "SINGLE_USER_API_KEY": ADMIN_KEY, "TIKTOKEN_CACHE_DIR": str(tiktoken), "LOG_LEVEL": "WARNING",
               "EMBEDDINGS_PIPELINE_CONCURRENCY": "4", "PRELOAD_EMBEDDING_MODELS": "", **extra}
        self.process = subprocess.Popen([sys.executable, "-m", "tldw_Server_API"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60,
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise AssertionError(self.process.stderr.read().decode()[-3000:] if self.process.stderr else "")
            try:
                if self.client.get("/health").status_code < 500:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.client.close()
