"""`tldw-embeddings`: the command line of the server (typer + rich). `serve` starts it; every
other command talks to a running server over HTTP — the same API users have — reached through
`--base-url` / `TLDW_BASE_URL` (default `http://127.0.0.1:8000`) and `--api-key` /
`TLDW_API_KEY`, else `SINGLE_USER_API_KEY`, else the single-user key file of `TLDW_DATA_DIR`.

`ingest PATH...` uploads files, folders and globs of every supported format with a live progress
bar (files, chunks, jobs; rate and ETA), skips files whose bytes are already stored (the server
keeps each upload's sha256), waits with `--wait` until they are searchable, prints a summary
table and exits 1 when any file failed. `search`, `embed`, `jobs`, `models`, `worker`,
`orchestrator`, and the operator's `dlq` / `reembed` / `compact` / `audit` (`ops.py`) complete it.
Exit codes: 0 ok, 1 an API or file error, 2 usage.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from tldw_Server_API.app.core.Chunking.text_extraction import EXTENSION_KINDS
from tldw_Server_API.app.core.config import Settings, export_settings
from tldw_Server_API.ops import resolve_api_key

app = typer.Typer(help="tldw_server embeddings: serve, ingest, search, embed, and operate it.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)
jobs_app = typer.Typer(help="Media embedding jobs: list, watch one, cancel.", no_args_is_help=True)
models_app = typer.Typer(help="Models: list what is served, warm one up.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)
TERMINAL = {"completed", "failed", "cancelled"}


class APIError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} ({error.get('code')}): {error.get('message') or body}")


@dataclass
class Client:
    base_url: str
    api_key: str | None
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=300)
        return self._http

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(0, {"error": {"code": "unreachable",
                                         "message": f"cannot reach {self.base_url}: {exc}"}}) from None
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise APIError(response.status_code, body)
        return body


def _client(ctx: typer.Context) -> Client:
    client: Client = ctx.obj
    return client


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@app.callback()
def main_options(
    ctx: typer.Context,
    base_url: Annotated[str | None, typer.Option(help="The server (env TLDW_BASE_URL).",
                                                 show_default="http://127.0.0.1:8000")] = None,
    api_key: Annotated[str | None, typer.Option(help="Your key (env TLDW_API_KEY; else the single-user key).",
                                                show_default=False)] = None,
) -> None:
    settings = Settings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    ctx.obj = Client(base_url or settings.tldw_base_url, resolve_api_key(api_key, settings))


# --- serve ------------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(envvar="TLDW_HOST", help="Interface to bind.",
                                             show_default="127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(envvar="TLDW_PORT", help="Port to bind.", show_default="8000")] = None,
    workers: Annotated[int | None, typer.Option(envvar="TLDW_WORKERS", help="Server processes.",
                                                show_default="1")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="TLDW_DATA_DIR", help="Where every file is written.",
                                                  show_default="./Databases")] = None,
    preload: Annotated[str | None, typer.Option(envvar="PRELOAD_EMBEDDING_MODELS",
                                                help="Models warmed at start-up (`default`, a list, or `none`).",
                                                show_default="default")] = None,
) -> None:
    """Run the server (its full configuration: the README's table of environment variables).
    An option not given leaves the setting to the environment, the YAML config, then the default."""
    from tldw_Server_API.__main__ import main as serve_main

    given = {"tldw_host": host, "tldw_port": port, "tldw_workers": workers, "tldw_data_dir": data_dir,
             "preload_embedding_models": preload}
    export_settings(**{name: value for name, value in given.items() if value is not None})
    serve_main()


# --- ingest -----------------------------------------------------------------------------------------
def expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files of supported formats under `paths` (files, folders recursively, globs), sorted and
    unique, and the paths that matched nothing."""
    found: dict[Path, None] = {}
    missing: list[str] = []
    for raw in paths:
        matches = [Path(m) for m in glob.glob(raw, recursive=True)] or ([Path(raw)] if Path(raw).exists() else [])
        if not matches:
            missing.append(raw)
        for match in matches:
            candidates = sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() else [match]
            for path in candidates:
                if path.suffix.lower() in EXTENSION_KINDS:
                    found[path.resolve()] = None
    return sorted(found), missing


@dataclass
class Ingested:
    path: Path
    outcome: str = "pending"      # added | skipped | failed
    media_id: int | None = None
    job_id: str | None = None
    job_status: str | None = None
    chunks: int = 0
    error: str | None = None


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs.")],
    wait: Annotated[bool, typer.Option(help="Wait until every file is searchable.")] = False,
    model: Annotated[str | None, typer.Option(help="Embedding model (default: the server's).")] = None,
) -> None:
    """Upload documents (txt, md, html, pdf, docx, epub, odt): chunked, embedded, searchable."""
    client = _client(ctx)
    files, missing = expand(paths)
    for raw in missing:
        err.print(f"[yellow]nothing matches[/yellow] {raw}")
    if not files:
        err.print("no supported files found")
        raise typer.Exit(1)
    rows = [Ingested(path) for path in files]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    started = time.monotonic()
    with Progress(*columns, console=err, transient=False) as progress:
        uploads = progress.add_task("files", total=len(rows), rate="")
        for row in rows:
            _upload(client, row, model)
            done = progress.tasks[uploads].completed + 1
            progress.update(uploads, advance=1, rate=f"{done / max(time.monotonic() - started, 1e-3):.1f} files/s")
        if wait:
            try:
                _wait(client, rows, progress)
            except APIError as exc:   # the server went away while we waited: what was uploaded stays
                err.print(f"[red]stopped waiting:[/red] {exc}")
                _summary(rows)
                raise typer.Exit(1) from None
    _summary(rows)
    if any(row.outcome == "failed" or row.job_status == "failed" for row in rows) or missing:
        raise typer.Exit(1)


def _upload(client: Client, row: Ingested, model: str | None) -> None:
    try:
        data = row.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        known = client.call("GET", "/api/v1/media", params={"source_hash": digest, "limit": 1})
        if known["items"]:
            row.outcome, row.media_id = "skipped", known["items"][0]["id"]
            row.chunks, row.job_status = known["items"][0]["chunk_count"], "stored"
            return
        form = {"title": row.path.stem, **({"embedding_model": model} if model else {})}
        added = client.call("POST", "/api/v1/media/add", files={"file": (row.path.name, data)}, data=form)
        row.outcome, row.media_id, row.job_id = "added", added["media_id"], added.get("job_id")
        row.job_status = added.get("embedding_status")
    except (APIError, OSError) as exc:
        row.outcome, row.error = "failed", str(exc)


def _wait(client: Client, rows: list[Ingested], progress: Progress) -> None:
    pending = [row for row in rows if row.job_id]
    jobs = progress.add_task("jobs", total=len(pending), rate="")
    chunks = progress.add_task("chunks", total=None, rate="")
    started = time.monotonic()
    while pending:
        stored = total = 0
        for row in rows:
            if not row.job_id:
                continue
            job = client.call("GET", f"/api/v1/media/embeddings/jobs/{row.job_id}")
            row.job_status, row.chunks = job["status"], job["total_chunks"]
            stored, total = stored + job["stored_chunks"], total + job["total_chunks"]
            if job["status"] == "failed":
                row.error = job.get("error")
        pending = [row for row in rows if row.job_id and row.job_status not in TERMINAL]
        rate = f"{stored / max(time.monotonic() - started, 1e-3):.0f} chunks/s"
        progress.update(jobs, completed=len([r for r in rows if r.job_id]) - len(pending))
        progress.update(chunks, completed=stored, total=total or None, rate=rate)
        if pending:
            time.sleep(0.3)


def _summary(rows: list[Ingested]) -> None:
    table = Table(title="ingest")
    for column in ("file", "outcome", "media", "chunks", "job"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.path.name, row.outcome, str(row.media_id or ""), str(row.chunks or ""),
                      row.job_status or "")
    out.print(table)
    counts = {outcome: sum(r.outcome == outcome for r in rows) for outcome in ("added", "skipped", "failed")}
    out.print(f"{counts['added']} added, {counts['skipped']} skipped (already stored), {counts['failed']} failed")
    for row in rows:
        if row.error:
            err.print(f"[red]failed[/red] {row.path}: {row.error}")


# --- search and embed -------------------------------------------------------------------------------
@app.command()
def search(
    ctx: typer.Context, query: Annotated[str, typer.Argument(help="What to look for.")],
    mode: Annotated[str, typer.Option(help="vector, fts or hybrid.")] = "hybrid",
    top_k: Annotated[int, typer.Option(help="Results.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's own JSON.")] = False,
) -> None:
    """Search your media (RAG search)."""
    try:
        body = _client(ctx).call("POST", "/api/v1/rag/search", json={"query": query, "mode": mode, "top_k": top_k})
    except APIError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(body))
        return
    table = Table(title=f"{mode} search: {query}")
    for column in ("title", "page", "score", "snippet"):
        table.add_column(column)
    for hit in body.get("data", []):
        snippet = " ".join(str(hit.get("text", "")).split())[:120]
        table.add_row(str(hit.get("title") or hit.get("media_id")), str(hit.get("page") or ""),
                      f"{hit.get('score', 0):.3f}", snippet)
    out.print(table)


@app.command()
def embed(
    ctx: typer.Context, text: Annotated[str, typer.Argument(help="The text, or - to read standard input.")],
    model: Annotated[str | None, typer.Option(help="Model (default: the server's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's own JSON.")] = False,
) -> None:
    """Embed one text (OpenAI's /v1/embeddings)."""
    value = sys.stdin.read() if text == "-" else text
    client = _client(ctx)
    try:
        if model is None:   # the server's default model
            cards = client.call("GET", "/api/v1/embeddings/models")["data"]
            card = next((c for c in cards if c.get("default")), cards[0])
            model = f"{card['provider']}:{card['id']}"
        body = client.call("POST", "/api/v1/embeddings", json={"input": value, "model": model})
    except APIError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(body))
        return
    vector = body["data"][0]["embedding"]
    out.print(f"{body['model']}: {len(vector)} dimensions, {body['usage']['prompt_tokens']} tokens")
    out.print("[" + ", ".join(f"{x:.4f}" for x in vector[:8]) + ", ...]")


# --- jobs and models --------------------------------------------------------------------------------
@jobs_app.command("list")
def jobs_list(ctx: typer.Context, status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
              limit: Annotated[int, typer.Option(help="How many.")] = 20) -> None:
    """Your media embedding jobs, newest first."""
    params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
    try:
        body = _client(ctx).call("GET", "/api/v1/media/embeddings/jobs", params=params)
    except APIError as exc:
        raise _fail(exc) from None
    table = Table(title=f"{body['total']} jobs")
    for column in ("job", "media", "status", "progress", "chunks", "model"):
        table.add_column(column)
    for job in body["items"]:
        table.add_row(job["job_id"], str(job["media_id"]), job["status"], f"{job['progress']:.0f}%",
                      f"{job['stored_chunks']}/{job['total_chunks']}", job["embedding_model"])
    out.print(table)


@jobs_app.command("watch")
def jobs_watch(ctx: typer.Context, job_id: str) -> None:
    """Follow one job to its end with a progress bar."""
    client = _client(ctx)
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                  console=err) as progress:
        task = progress.add_task(job_id, total=100)
        while True:
            try:
                job = client.call("GET", f"/api/v1/media/embeddings/jobs/{job_id}")
            except APIError as exc:
                raise _fail(exc) from None
            progress.update(task, completed=job["progress"], description=f"{job_id} {job['status']}")
            if job["status"] in TERMINAL:
                break
            time.sleep(0.3)
    out.print(f"{job_id}: {job['status']}" + (f" ({job['error']})" if job.get("error") else ""))
    if job["status"] != "completed":
        raise typer.Exit(1)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel one of your jobs."""
    try:
        job = _client(ctx).call("POST", f"/api/v1/media/embeddings/jobs/{job_id}/cancel")
    except APIError as exc:
        raise _fail(exc) from None
    out.print(f"{job_id}: {job['status']}")


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """The models you may use (OpenAI's /v1/models)."""
    try:
        body = _client(ctx).call("GET", "/api/v1/models")
    except APIError as exc:
        raise _fail(exc) from None
    for model in body["data"]:
        out.print(f"{model['id']}  ({model['owned_by']})")


@models_app.command("warmup")
def models_warmup(ctx: typer.Context, model: str) -> None:
    """Load and warm a model now (admin)."""
    try:
        body = _client(ctx).call("POST", "/api/v1/embeddings/models/warmup", json={"model": model})
    except APIError as exc:
        raise _fail(exc) from None
    out.print(f"{body['provider']}:{body['model']} {body['status']}")


# --- processes and operator tools ---------------------------------------------------------------------
@app.command()
def worker(stage: Annotated[str, typer.Option(help="chunking, embedding, storage or all.")] = "all",
           burst: Annotated[bool, typer.Option(help="Exit once the stage's streams are empty.")] = False) -> None:
    """Run one Redis pipeline worker process (EMBEDDINGS_PIPELINE=redis)."""
    from tldw_Server_API.app.core.Embeddings.workers.base_worker import main as worker_main

    worker_main(["--stage", stage, *(["--burst"] if burst else [])])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def orchestrator(ctx: typer.Context) -> None:
    """Run the worker orchestrator (its options: `tldw-embeddings orchestrator --help-orchestrator`)."""
    from tldw_Server_API.app.core.Embeddings.worker_orchestrator import main as orchestrator_main

    args = ["--help" if a == "--help-orchestrator" else a for a in ctx.args]
    orchestrator_main(args)


def _ops(command: str) -> Any:
    def run(ctx: typer.Context) -> None:
        from tldw_Server_API.ops import main as ops_main

        client = _client(ctx)
        code = ops_main(["--base-url", client.base_url, *(["--api-key", client.api_key] if client.api_key else []),
                         command, *ctx.args])
        raise typer.Exit(code)

    run.__doc__ = {"dlq": "Dead letters: stats, list, show, approve, ignore, quarantine, requeue, purge (admin).",
                   "reembed": "Re-embed media: --user U [--media M] | --all, [--model M] [--at ISO] (admin).",
                   "compact": "Delete the vectors of soft-deleted media now (admin).",
                   "audit": "Admin actions, newest first: [--action A] [--user U] (admin)."}[command]
    return run


for _name in ("dlq", "reembed", "compact", "audit"):
    app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                         "help_option_names": []})(_ops(_name))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
