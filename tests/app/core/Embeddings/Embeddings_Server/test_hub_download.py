"""Hub downloads (AUTO_DOWNLOAD_MODELS) through the real huggingface_hub client against a small
hub server on 127.0.0.1 serving the real bundled MiniLM files: file choice, revision pinning, our
revision record, the error mapping (absent repo or revision, offline, unreachable hub), and the
providers' download / background-download / warmup paths, which must give the same vectors as
the bundled copy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from support import MODEL, free_port

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig, ModelManagerConfig, OnnxConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.hub_download import choose_files, download_model
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import METADATA_FILE, ModelResolver
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.onnx_provider import OnnxProvider
from tldw_Server_API.app.core.errors import ModelNotFound, ServiceUnavailable

REPO = "fake-org/mini"
MAIN, V1 = "c0ffee" + "0" * 34, "beef" + "1" * 36
BATCHING = BatchingConfig(max_wait_ms=1, max_queue_texts=1000,
                          max_padded_tokens=1024, max_batch_rows=16)
TEXTS = ["The cat sat on the mat.", "Quantum computers use qubits.", "short"]


class FakeHub:
    """The parts of the hub API `model_info` and `snapshot_download` use, for one repo whose
    revisions `main` and `v1` both hold `files`."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub.route(self, head=False)

            def do_HEAD(self) -> None:
                hub.route(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def commit(self, revision: str) -> str | None:
        return {"main": MAIN, MAIN: MAIN, "v1": V1, V1: V1}.get(revision)

    def route(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        api = f"/api/models/{REPO}"
        if path == api or path.startswith(api + "/revision/"):
            commit = self.commit(path.rpartition("/revision/")[2] if "/revision/" in path else "main")
            if commit is None:
                return self._send(handler, 404, b"{}", {"X-Error-Code": "RevisionNotFound"})
            body = {"id": REPO, "sha": commit, "siblings": [{"rfilename": name} for name in self.files]}
            return self._send(handler, 200, json.dumps(body).encode())
        if path.startswith(api + "/tree/"):
            listing = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                       for name, data in self.files.items()]
            return self._send(handler, 200, json.dumps(listing).encode())
        if path.startswith(f"/{REPO}/resolve/"):
            revision, _, name = path[len(f"/{REPO}/resolve/"):].partition("/")
            data = self.files.get(name)
            if data is None or self.commit(revision) is None:
                return self._send(handler, 404, b"{}", {"X-Error-Code": "EntryNotFound"})
            headers = {"X-Repo-Commit": str(self.commit(revision)), "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return self._send(handler, 200, b"" if head else data, headers, length=len(data))
        self._send(handler, 404, b"{}", {"X-Error-Code": "RepoNotFound"})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        if body:
            handler.wfile.write(body)


@pytest.fixture(scope="module")
def hub(bundled_model_path: Path) -> Iterator[FakeHub]:
    files = {p.relative_to(bundled_model_path).as_posix(): p.read_bytes()
             for p in bundled_model_path.rglob("*") if p.is_file()}
    files["pytorch_model.bin"] = b"legacy weights, never fetched when safetensors exist"
    files["onnx/model.onnx"] = b"an exported copy we do not need"
    server = FakeHub(files)
    server.thread.start()
    yield server
    server.server.shutdown()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run with HF_HUB_OFFLINE=1; these talk to the hub server on 127.0.0.1 only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_choose_files_takes_configs_tokenizer_and_one_weight_format() -> None:
    names = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt", "merges.txt",
             "README.md", ".gitattributes", "onnx/model.onnx", "onnx/config.json", "openvino/openvino_model.xml",
             "1_Pooling/config.json", "modules.json", "tf_model.h5", "rust_model.ot", "modeling_custom.py",
             "sentencepiece.bpe.model", "model-00001-of-00002.safetensors", "model.safetensors.index.json"]
    chosen = choose_files(names)
    assert sorted(chosen) == sorted(["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "merges.txt",
                                     "1_Pooling/config.json", "modules.json", "sentencepiece.bpe.model",
                                     "model-00001-of-00002.safetensors", "model.safetensors.index.json"])
    assert "modeling_custom.py" in choose_files(names, allow_code=True)
    legacy = choose_files(["config.json", "pytorch_model.bin", "training_args.bin"])
    assert legacy == ["config.json", "pytorch_model.bin"]


def test_download_fetches_the_resolved_commit_and_records_it(tmp_path: Path, hub: FakeHub, online: None) -> None:
    target = tmp_path / "fake-org--mini"
    hub.requests.clear()
    assert download_model(REPO, "v1", target, endpoint=hub.endpoint) == V1
    assert hub.requests[0] == f"GET /api/models/{REPO}/revision/v1"
    assert all(V1 in r for r in hub.requests[1:]), hub.requests     # files fetched at the commit, never a branch
    got = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert "model.safetensors" in got and "1_Pooling/config.json" in got
    assert not {"pytorch_model.bin", "onnx/model.onnx", "README.md"} & got
    assert json.loads((target / METADATA_FILE).read_text())["commit"] == V1
    assert not any(".partial" in p.name for p in tmp_path.iterdir())
    files = ModelResolver(tmp_path, {REPO: "v1"}).resolve(REPO)
    assert (files.path, files.revision, files.source) == (target.resolve(), V1, "cache")
    with pytest.raises(ModelNotFound) as info:
        ModelResolver(tmp_path, {REPO: "main"}).resolve(REPO)
    assert info.value.code == "model_revision_mismatch"


@pytest.mark.parametrize(("repo", "revision", "code"), [
    ("fake-org/absent", None, "model_not_found"),
    (REPO, "no-such-branch", "model_revision_mismatch"),
])
def test_absent_repo_or_revision_is_model_not_found(tmp_path: Path, hub: FakeHub, online: None,
                                                    repo: str, revision: str | None, code: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        download_model(repo, revision, tmp_path / "t", endpoint=hub.endpoint)
    assert info.value.code == code
    assert list(tmp_path.iterdir()) == []


def test_offline_hub_is_model_not_found_without_a_request(tmp_path: Path, hub: FakeHub,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match="offline"):
        download_model("nobody/unknown-model", None, tmp_path / "t", endpoint=hub.endpoint)
    assert time.monotonic() - started < 5 and hub.requests == []


def test_unreachable_hub_is_model_not_found_quickly(tmp_path: Path, online: None) -> None:
    """Not here and not fetchable: the model is not found (404), not an upstream failure (502)."""
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match="could not be reached"):
        download_model("nobody/unknown-model", None, tmp_path / "t", endpoint=f"http://127.0.0.1:{free_port()}",
                       timeout_s=2)
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


# --- through the providers ------------------------------------------------------------------------
def _models(auto_download: bool, revisions: dict[str, str] | None = None) -> ModelManagerConfig:
    return ModelManagerConfig(max_models_in_memory=2, max_memory_mb=0, unload_timeout_s=0,
                              revisions=revisions or {}, trusted_remote_code=(), auto_download=auto_download,
                              preload=())


def _hf(root: Path, hub: FakeHub | None, auto_download: bool, endpoint: str | None = None) -> HuggingFaceProvider:
    models = _models(auto_download, {REPO: "v1"})
    resolver = ModelResolver.from_config(root, models)
    return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), resolver, BATCHING, models,
                               hub_endpoint=endpoint or (hub.endpoint if hub else None))


def test_provider_downloads_in_the_background_then_serves_identical_vectors(tmp_path: Path, hub: FakeHub,
                                                                            online: None) -> None:
    provider = _hf(tmp_path, hub, auto_download=True)
    bundled = _hf(tmp_path / "other", None, auto_download=False)

    async def run() -> tuple[Any, Any]:
        with pytest.raises(ServiceUnavailable) as info:       # a request never waits for a download
            provider.model_info(REPO)
        assert info.value.code == "model_downloading" and info.value.retry_after
        downloaded = await provider.download(REPO)           # joins the running download
        assert (downloaded.source, downloaded.dimension, provider.model_revision(REPO)) == ("cache", 384, V1)
        warmed = await provider.warmup(REPO)
        assert warmed.model_id == REPO and provider.loaded_models() == [REPO]
        return await provider.embed(REPO, TEXTS), await bundled.embed(MODEL, TEXTS)

    try:
        ours, reference = asyncio.run(run())
    finally:
        asyncio.run(provider.aclose())
        asyncio.run(bundled.aclose())
    np.testing.assert_array_equal(ours.vectors, reference.vectors)
    assert ours.token_counts == reference.token_counts


def test_auto_download_off_never_contacts_the_hub(tmp_path: Path, hub: FakeHub, online: None) -> None:
    provider = _hf(tmp_path, hub, auto_download=False)
    hub.requests.clear()
    with pytest.raises(ModelNotFound, match="auto-download is off"):
        provider.model_info(REPO)
    with pytest.raises(ModelNotFound, match="auto-download is off"):
        asyncio.run(provider.download(REPO))
    asyncio.run(provider.aclose())
    assert hub.requests == []


def test_an_unreachable_hub_is_learnt_in_the_background_then_missing_models_are_404_at_once(
    tmp_path: Path, online: None,
) -> None:
    """The provider probes the hub once at start (a TCP connect, off the caller's thread); once it
    knows the hub refuses connections, a model that is not here is ModelNotFound at once, with no
    download started (before, a 503 sent clients retrying for ~11 s into a 502)."""
    provider = _hf(tmp_path, None, auto_download=True, endpoint=f"http://127.0.0.1:{free_port()}")
    deadline = time.monotonic() + 10
    while provider._hub is not None and provider._hub.reachable() is not False:
        assert time.monotonic() < deadline, "the hub probe never finished"
        time.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match="cannot be reached"):
        provider.model_info("nobody/unknown-model")
    assert time.monotonic() - started < 1
    assert provider._downloads.recent_failure("nobody/unknown-model") is None   # nothing was attempted
    asyncio.run(provider.aclose())


def test_offline_hub_gives_model_not_found_at_once(tmp_path: Path, hub: FakeHub,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    provider = _hf(tmp_path, hub, auto_download=True)
    hub.requests.clear()
    with pytest.raises(ModelNotFound, match="offline"):
        provider.model_info("nobody/unknown-model")
    with pytest.raises(ModelNotFound, match="offline"):
        asyncio.run(provider.download("nobody/unknown-model"))
    asyncio.run(provider.aclose())
    assert hub.requests == []


def test_onnx_download_fetches_then_exports_once(tmp_path: Path, hub: FakeHub, online: None) -> None:
    models = _models(True, {REPO: "v1"})
    provider = OnnxProvider(OnnxConfig(threads=0, quantize="fp32"), ModelResolver.from_config(tmp_path, models),
                            BATCHING, models, hub_endpoint=hub.endpoint)
    try:
        info = asyncio.run(provider.download(f"{REPO}@fp32"))
        assert info.source == "cache" and provider.graph_path(f"{REPO}@fp32").is_file()
        assert (tmp_path / "fake-org--mini" / "model.safetensors").is_file()
    finally:
        asyncio.run(provider.aclose())
