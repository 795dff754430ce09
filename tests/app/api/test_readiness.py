"""Readiness as a newcomer meets it: the default model warms at start-up in the background, and
`/health` answers 503 `loading` (with Retry-After) and `/health/ready` 503 `not_ready` until it is
warm, then 200; the start-up log names the data dir, store, pipeline, models, docs URL and where
the key is (never the key); a port already in use is reported before any "serving on" line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient
from support import ADMIN_KEY, MODEL, ServerProcess, make_settings

from tldw_Server_API.app.main import create_app


def test_health_is_loading_until_the_default_model_is_warm(tmp_path: Path, tiktoken_dir: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, tiktoken_dir, preload_embedding_models=["default"]))) as client:
        first = client.get("/health")
        assert first.status_code == 503 and first.json()["status"] == "loading", first.text
        assert first.headers["retry-after"] == "2"
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready", ready.text
        deadline = time.monotonic() + 120
        while (response := client.get("/health")).status_code == 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.1)
        assert response.status_code == 200 and response.json()["status"] == "healthy", response.text
        assert response.json()["loaded_models"], response.json()           # the default model is loaded
        assert client.get("/health/ready").status_code == 200


def test_start_up_warms_the_engine_a_bare_id_runs_on(tmp_path: Path, tiktoken_dir: Path) -> None:
    """Start-up warms the engine the bare id (the default model, and what clients name) runs on
    (here pinned to torch by EMBEDDINGS_ENGINE, so on any CPU): loaded, and its oneDNN
    primitives made (`primed_models`), so its first requests compile nothing."""
    settings = make_settings(tmp_path, tiktoken_dir, preload_embedding_models=["default"],
                             embeddings_engine="huggingface")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while (response := client.get("/health")).status_code == 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.1)
        torch_provider = response.json()["providers"]["huggingface"]
        assert torch_provider["primed_models"] == [MODEL] == torch_provider["unpadded_models"], torch_provider


def test_start_up_warms_no_engine_of_a_catalog_model_that_is_not_preloaded(tmp_path: Path,
                                                                          tiktoken_dir: Path) -> None:
    """Only a preloaded model's bare id gets its engine warmed: another catalog model (here the
    bundled MiniLM, beside a preloaded model that is not on this machine) stays unloaded."""
    absent = "example-org/not-on-this-machine"
    settings = make_settings(tmp_path, tiktoken_dir, embeddings_engine="huggingface", auto_download_models=False,
                             embeddings_models=[f"huggingface:{MODEL}", f"huggingface:{absent}"],
                             preload_embedding_models=[f"huggingface:{absent}"])
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while (health := client.get("/health").json())["status"] == "loading":   # the preload is done after
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert health["providers"]["huggingface"]["loaded_models"] == [], health["providers"]["huggingface"]


def test_without_preload_health_is_healthy_at_once(tmp_path: Path, tiktoken_dir: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, tiktoken_dir))) as client:
        assert client.get("/health").json()["status"] == "healthy"


def test_the_startup_log_says_where_things_are_and_never_the_key(tmp_path: Path, tiktoken_dir: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiktoken_dir, LOG_LEVEL="INFO")
    server.stop()
    assert server.process.stderr is not None
    log = server.process.stderr.read().decode()
    for line in ("data dir:", "vector store:  chroma embedded", "pipeline:      embedded", "models:", "API docs:",
                 "/docs", "OpenAI base URL:", "API key:       single-user"):
        assert line in log, (line, log[-2000:])
    assert ADMIN_KEY not in log


def test_a_port_in_use_is_reported_before_serving(tmp_path: Path, tiktoken_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "TLDW_DATA_DIR": str(tmp_path), "TLDW_PORT": str(port), "LOG_LEVEL": "INFO",
               "TIKTOKEN_CACHE_DIR": str(tiktoken_dir)}
        run = subprocess.run([sys.executable, "-m", "tldw_Server_API"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"cannot serve on 127.0.0.1:{port}" in run.stderr and "serving on" not in run.stderr
