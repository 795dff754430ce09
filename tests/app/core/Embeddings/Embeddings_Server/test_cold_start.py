"""Concurrent cold loads of two providers in a fresh process (hardening defect 4): the first onnx
request and the first huggingface request of a process arriving together both load their model.
Before `LIBRARY_LOCK`, transformers' lazy imports raced and one of them failed with
"cannot import name 'AutoTokenizer'" in every try. Each try is a new interpreter, since the race
exists only while transformers is imported for the first time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TRIES = 2
SCRIPT = r"""
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from support import MODEL, make_settings
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import create_provider_registry

async def main() -> None:
    model_dir = Path(sys.argv[1])
    settings = make_settings(model_dir / "data", embeddings_model_dir=model_dir)
    registry = create_provider_registry(settings.engine_config())
    results = await asyncio.gather(registry.get("onnx").embed(MODEL, ["hello"]),
                                   registry.get("huggingface").embed(MODEL, ["hello"]), return_exceptions=True)
    await registry.aclose()
    for result in results:
        print("ok" if hasattr(result, "vectors") else f"failed {result!r} cause {result.__cause__!r}")

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def exported_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir holding the onnx export already, so each try races on loading alone."""
    model_dir = tmp_path_factory.mktemp("cold-models")
    subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), str(Path(__file__).parents[4])],
                   check=True, capture_output=True, timeout=300)
    return model_dir


@pytest.mark.parametrize("attempt", range(TRIES))
def test_first_onnx_and_huggingface_loads_of_a_process_both_succeed(exported_model_dir: Path, attempt: int) -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(exported_model_dir), str(Path(__file__).parents[4])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ok", "failed"))]
    assert lines == ["ok", "ok"], lines
