"""Download of one model from the Hugging Face hub into the model storage root, used when
AUTO_DOWNLOAD_MODELS allows it: resolve the revision to a commit, `snapshot_download(repo_id,
revision=<commit>, local_dir=...)` of the files a local provider needs (one weight format, no
ONNX/OpenVINO/TF copies), record the revision in `.tldw_model.json`, then move the folder into
place atomically. Blocking: callers run it on a worker thread. huggingface_hub is imported lazily;
its errors become ModelNotFound (absent, gated, offline, hub unreachable). `HubProbe` learns in
the background whether the hub answers at all.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import METADATA_FILE
from tldw_Server_API.app.core.errors import ModelNotFound, ProviderError

_SKIP_DIRS = {"onnx", "openvino", "tf", "flax", "coreml", "gguf"}
_SMALL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "vocab*", "merges*")


def choose_files(names: Sequence[str], allow_code: bool = False) -> list[str]:
    """Repo files worth fetching: configs and tokenizer files (any folder but exported-format
    ones), top-level safetensors weights (else pytorch `.bin`), and `*.py` only for trusted code."""
    chosen: list[str] = []
    top_level = [n for n in names if "/" not in n]
    weights = [n for n in top_level if n.endswith(".safetensors")] or [
        n for n in top_level if n.endswith(".bin") and n.startswith("pytorch_model")]
    for name in names:
        parts = name.split("/")
        if parts[0] in _SKIP_DIRS or any(p.startswith(".") for p in parts):
            continue
        leaf = parts[-1]
        small = any(fnmatch.fnmatch(leaf, pattern) for pattern in _SMALL_FILES) and not leaf.endswith(".bin")
        if small or name in weights or (allow_code and leaf.endswith(".py")):
            chosen.append(name)
    return chosen


def _hub_error(repo_id: str, revision: str | None, exc: Exception) -> Exception:
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFound(f"Revision `{revision}` of `{repo_id}` does not exist on the Hugging Face hub",
                             param="model", code="model_revision_mismatch")
    if isinstance(exc, RepositoryNotFoundError):  # also gated and private repos
        return ModelNotFound(f"The model `{repo_id}` is not available locally and the Hugging Face hub has "
                             "no accessible repository by that name", param="model")
    if isinstance(exc, OfflineModeIsEnabled | LocalEntryNotFoundError):
        return ModelNotFound(f"The model `{repo_id}` is not available locally and the Hugging Face hub is "
                             "offline (HF_HUB_OFFLINE)", param="model")
    return ModelNotFound(f"The model `{repo_id}` is not available locally and the Hugging Face hub could not be "
                         "reached to fetch it", param="model")


class HubProbe:
    """Whether the Hugging Face hub answers at all, learnt by one TCP connect in a background
    thread (at most every `ttl_s`), so a request for a model that is not here and cannot be
    fetched gets its 404 at once instead of a download that will fail. `reachable()` never
    blocks: None until the first probe ends."""

    def __init__(self, endpoint: str | None, *, timeout_s: float = 3.0, ttl_s: float = 300.0) -> None:
        from urllib.parse import urlsplit

        from huggingface_hub import constants

        parts = urlsplit(endpoint or constants.ENDPOINT)   # the hub client's own (HF_ENDPOINT)
        self._address = (parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80))
        self._timeout_s, self._ttl_s = timeout_s, ttl_s
        self._state: bool | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self._running = False

    def reachable(self) -> bool | None:
        with self._lock:
            stale = time.monotonic() - self._checked > self._ttl_s
            if stale and not self._running:
                self._running = True
                threading.Thread(target=self._probe, name="hub-probe", daemon=True).start()
            return self._state

    def _probe(self) -> None:
        import socket

        try:
            with socket.create_connection(self._address, timeout=self._timeout_s):
                state = True
        except OSError:
            state = False
        with self._lock:
            self._state, self._checked, self._running = state, time.monotonic(), False


def download_model(repo_id: str, revision: str | None, target: Path, *, endpoint: str | None = None,
                   timeout_s: float = 10.0, allow_code: bool = False) -> str:
    """Fetch `repo_id` at `revision` (None: the default branch) into `target`; returns the commit."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if is_offline_mode():
        raise _hub_error(repo_id, revision, _offline_error())
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=timeout_s)
        commit = str(info.sha or "")
        files = choose_files([s.rfilename for s in info.siblings or []], allow_code)
        if not commit or not any(f.endswith("config.json") for f in files):
            raise ModelNotFound(f"`{repo_id}` on the Hugging Face hub is not a transformers model", param="model")
        started = time.monotonic()
        snapshot_download(repo_id, revision=commit, local_dir=partial, allow_patterns=files,
                          endpoint=endpoint, etag_timeout=timeout_s, max_workers=4)
    except (ModelNotFound, ProviderError):
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except Exception as exc:  # the hub client raises many types; each maps to one domain error
        shutil.rmtree(partial, ignore_errors=True)
        logger.warning("hub download of {} failed: {}: {}", repo_id, type(exc).__name__, exc)
        raise _hub_error(repo_id, revision, exc) from exc
    shutil.rmtree(partial / ".cache", ignore_errors=True)   # the hub client's resume bookkeeping
    record = {"repo_id": repo_id, "revision": revision or "main", "commit": commit,
              "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (partial / METADATA_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    try:
        os.rename(partial, target)
    except OSError:   # another process finished the same download first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise ProviderError(f"Could not store the download of `{repo_id}`") from None
    logger.info("downloaded {}@{} ({} files, {:.1f}s)", repo_id, commit[:12], len(files),
                time.monotonic() - started)
    return commit


def _offline_error() -> Exception:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return OfflineModeIsEnabled("offline mode is enabled")
