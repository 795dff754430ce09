"""The `tldw-embeddings` command line against a live server: `--help` of every command (with
their environment variables and defaults), `ingest` of a folder of mixed formats with its progress
output and summary, a second run that skips every file, a corrupt file failing the run (exit 1),
`search --json` printing the API's own JSON, `embed`, `jobs`, `models`, and exit codes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ADMIN_KEY, LiveServer, free_port, make_settings
from typer.testing import CliRunner

from tldw_Server_API.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "documents"
runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(tmp_path_factory.mktemp("cli"), tiktoken_dir)) as running:
        yield running


def cli(server: LiveServer | None, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    base = server.base_url if server else f"http://127.0.0.1:{free_port()}"
    return runner.invoke(app, ["--base-url", base, "--api-key", ADMIN_KEY, *args], input=stdin)


def test_every_command_has_help() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "TLDW_BASE_URL" in top.stdout
    commands = ["serve", "ingest", "search", "embed", "worker", "jobs", "jobs list", "jobs watch", "jobs cancel",
                "models", "models list", "models warmup"]
    for command in commands:
        result = runner.invoke(app, [*command.split(), "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout, (command, result.stdout)
    serve = runner.invoke(app, ["serve", "--help"]).stdout
    for variable in ("TLDW_HOST", "TLDW_PORT", "TLDW_WORKERS", "TLDW_DATA_DIR", "PRELOAD_EMBEDDING_MODELS"):
        assert variable in serve
    assert "8000" in serve and "127.0.0.1" in serve
    for command in ("dlq", "reembed", "compact", "audit"):          # the operator's commands (ops.py)
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "usage:" in result.stdout.lower(), (command, result.stdout)


def test_ingest_a_folder_then_again_skips_everything_and_search_finds_it(server: LiveServer, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    for name in ("sample.pdf", "sample.docx", "sample.epub", "sample.html", "sample.odt"):
        shutil.copy(FIXTURES / name, folder / name)
    (folder / "nested" / "notes.md").write_text("# Notes\n\nThe glassblower of Murano shapes blue vases.\n")
    (folder / "image.png").write_bytes(b"\x89PNG not a document")          # unsupported: not picked up
    first = cli(server, "ingest", str(folder), "--wait")
    assert first.exit_code == 0, (first.stdout, first.stderr)
    assert "6 added, 0 skipped (already stored), 0 failed" in first.stdout, first.stdout
    assert "files" in first.stderr and "chunks" in first.stderr and "jobs" in first.stderr   # the progress bars
    assert first.stdout.count("completed") == 6 and "image.png" not in first.stdout

    again = cli(server, "ingest", str(folder / "**" / "*.*"))
    assert again.exit_code == 0, again.stderr
    assert "0 added, 6 skipped (already stored), 0 failed" in again.stdout, again.stdout

    found = cli(server, "search", "glassblower Murano blue vases", "--json", "--mode", "fts")
    assert found.exit_code == 0, found.stderr
    body = json.loads(found.stdout)
    assert body["data"] and "glassblower" in body["data"][0]["text"], body
    table = cli(server, "search", "glassblower Murano", "--top-k", "2")
    assert table.exit_code == 0 and "snippet" in table.stdout and "glassblower" in table.stdout


def test_a_corrupt_file_fails_the_run_with_its_reason(server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("A fine little text about tide pools.")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    result = cli(server, "ingest", str(tmp_path))
    assert result.exit_code == 1
    assert "1 added, 0 skipped (already stored), 1 failed" in result.stdout
    assert "broken.pdf" in result.stderr and "failed" in result.stderr
    assert cli(server, "ingest", str(tmp_path / "missing-*.txt")).exit_code == 1


def test_embed_jobs_models_and_exit_codes(server: LiveServer) -> None:
    embedded = cli(server, "embed", "-", "--json", stdin="hello from stdin")
    assert embedded.exit_code == 0 and len(json.loads(embedded.stdout)["data"][0]["embedding"]) == 384
    assert "384 dimensions" in cli(server, "embed", "hello").stdout
    assert cli(server, "jobs", "list").exit_code == 0
    assert "sentence-transformers/all-MiniLM-L6-v2" in cli(server, "models", "list").stdout
    assert cli(server, "jobs", "watch", "job_nope").exit_code == 1                # an API error: 1
    assert cli(None, "models", "list").exit_code == 1                             # no server: 1
    assert runner.invoke(app, ["search"]).exit_code == 2                          # usage: 2


def test_serve_sh_passes_its_arguments_to_the_cli() -> None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(["bash", "scripts/serve.sh", "--help"], cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--port" in run.stdout and "TLDW_PORT" in run.stdout
