"""Dependency rules of ARCHITECTURE.md section 1, checked on the source: nothing under core/ imports
FastAPI/Starlette or the API layer; endpoints never import each other; workers never import each
other; no module outside core/config.py reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tldw_Server_API"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)   # `from package import module`
    return names


def modules_under(relative: str) -> list[Path]:
    return sorted((ROOT / relative).rglob("*.py"))


def test_core_is_framework_free() -> None:
    assert modules_under("app/core")
    for path in modules_under("app/core"):
        bad = {n for n in imports_of(path) if n.split(".")[0] in {"fastapi", "starlette"} or ".app.api" in n}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_endpoints_do_not_import_each_other() -> None:
    for path in modules_under("app/api/v1/endpoints"):
        bad = {n for n in imports_of(path) if n.startswith("tldw_Server_API.app.api.v1.endpoints")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


STAGE_HANDLERS = {"chunking_worker", "embedding_worker", "storage_worker"}


def test_stage_handlers_do_not_import_each_other_and_only_the_table_names_them() -> None:
    """A stage handler imports no other worker module; only `stages.py` (the stage table) imports
    the handlers; the delivery loop and the executors reach them through that table."""
    package = "tldw_Server_API.app.core.Embeddings.workers"
    for path in modules_under("app/core/Embeddings/workers"):
        siblings = {n.rsplit(".", 1)[1] for n in imports_of(path) if n.startswith(package + ".")}
        if path.stem in STAGE_HANDLERS:
            assert not siblings, f"{path.relative_to(ROOT)} imports {siblings}"
        elif path.stem != "stages":
            assert not siblings & STAGE_HANDLERS, f"{path.relative_to(ROOT)} imports {siblings & STAGE_HANDLERS}"


def test_only_config_reads_the_environment() -> None:
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "app/core/config.py":
            continue
        source = path.read_text(encoding="utf-8")
        assert "os.environ" not in source and "os.getenv" not in source, path.relative_to(ROOT)


def test_engine_adapters_do_not_import_the_registry() -> None:
    """The provider protocol and value types live in provider_types.py: an adapter (or the batcher)
    importing Embeddings_Create would close the circle registry -> adapter -> registry again."""
    engine = [*modules_under("app/core/Embeddings/Embeddings_Server"), ROOT / "app/core/Embeddings/request_batching.py"]
    for path in engine:
        if path.name == "Embeddings_Create.py":
            continue
        bad = {n for n in imports_of(path) if n.endswith("Embeddings_Server.Embeddings_Create")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
