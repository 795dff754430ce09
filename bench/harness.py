"""Shared plumbing of the benchmarks: the real server (`python -m tldw_Server_API`) as a separate
process on a free port (settings as environment variables), its own timings from `/metrics`, a
throwaway pgvector database, machine facts and latency percentiles. Imports the standard library,
numpy, httpx, prometheus_client and pgserver/psycopg (lazily); never the app: the server runs in
its own process, as in production."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH_KEY = "bench-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> list[float] | None:
    """1/5/15-minute load: other work on the machine makes every number here noisier."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


class CpuSteal:
    """Share of this VM's CPU time the hypervisor gave to others (`steal` in /proc/stat) over a
    block: on a shared host it slows every measurement and explains run-to-run drift."""

    def __init__(self) -> None:
        self.share: float | None = None
        self._start: list[int] | None = None

    @staticmethod
    def _read() -> list[int] | None:
        try:
            return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return None

    def __enter__(self) -> CpuSteal:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        if self._start is None or end is None or len(end) < 8:
            return
        delta = [b - a for a, b in zip(self._start, end, strict=False)]
        self.share = delta[7] / sum(delta) if sum(delta) else None


def machine_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor(),
            "machine": platform.machine(), "load_average_at_start": load_average()}


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean())}


class ServerProcess:
    """`python -m tldw_Server_API` serving `data_dir` in single-user mode; `env` adds settings
    (e.g. `RAG__VECTOR_STORE_TYPE`). Waits until the server is ready (`/health` 200: models warm);
    stops it on exit."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None, ready_timeout_s: float = 300) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.ready_timeout_s = ready_timeout_s
        # The child inherits this environment (HF_HUB_OFFLINE, TIKTOKEN_CACHE_DIR, ...) plus ours.
        self.env = {**os.environ, "TLDW_HOST": "127.0.0.1", "TLDW_PORT": str(self.port),
                    "TLDW_DATA_DIR": str(data_dir), "SINGLE_USER_API_KEY": BENCH_KEY, "LOG_LEVEL": "WARNING",
                    **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {BENCH_KEY}"}

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process (all its threads) has used so far; Linux only.
        Less sensitive than wall time to other work on the machine."""
        stat = Path(f"/proc/{self.process.pid}/stat") if self.process is not None else None
        if stat is None or not stat.exists():
            return None
        fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onwards
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "tldw_Server_API"], env=self.env)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode} before it was ready")
            try:
                # /health is 503 `loading` until the start-up work (engine choice, preloaded models) is done:
                # a measurement that started earlier would share the cores with it
                response = httpx.get(f"{self.base_url}/health", headers=self.headers, timeout=5)
                if response.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"the server did not answer within {self.ready_timeout_s:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None


class RawHTTPClient:
    """A keep-alive HTTP/1.1 client on a bare socket (TCP_NODELAY): the request written in one
    send, the response read by its Content-Length. For latency figures of the server itself:
    http.client's own request building and header parsing added ~0.5 ms per request on a 2-core
    VM (measured against this, alternating blocks on one server), time that is the client's."""

    def __init__(self, port: int, headers: Mapping[str, str]) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._buffer = b""

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        self._sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self._head}Content-Length: {len(body)}"
                           f"\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._read()
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            rest += self._read()
        self._buffer = rest[length:]
        return int(status_line.split()[1]), headers, rest[:length]

    def _read(self) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self._sock.close()


def server_seconds(client: httpx.Client, route: str = "/api/v1/rag/search") -> dict[str, tuple[float, int]]:
    """(sum of seconds, count) of the server's own histograms from `GET /metrics`: `route` as its
    middleware times it ('server') and the embedding provider calls ('embedding')."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"http_request_duration_seconds": "server", "embeddings_provider_seconds": "embedding"}
    totals: dict[str, list[float]] = {label: [0.0, 0.0] for label in wanted.values()}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        label = wanted.get(family.name)
        for sample in family.samples if label else []:
            if label == "server" and sample.labels.get("route") != route:
                continue
            if sample.name.endswith("_sum"):
                totals[label][0] += sample.value
            elif sample.name.endswith("_count"):
                totals[label][1] += sample.value
    return {label: (total, int(count)) for label, (total, count) in totals.items()}


def server_means_ms(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]) -> dict[str, float]:
    out = {}
    for label, (total, count) in after.items():
        calls = count - before[label][1]
        out[f"{label}_mean_ms"] = (total - before[label][0]) / calls * 1000 if calls else float("nan")
    return out


@contextlib.contextmanager
def pgvector_server() -> Iterator[str]:
    """PostgreSQL 16 + pgvector from pgserver (as tests/conftest.py starts it): a unix-socket DSN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = None
    try:
        server = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
        dsn = server.get_uri()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield dsn
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
