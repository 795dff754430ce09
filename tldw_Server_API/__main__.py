"""`python -m tldw_Server_API`: serve the app with uvicorn on TLDW_HOST:TLDW_PORT."""

from __future__ import annotations

import socket
import sys

import uvicorn
from loguru import logger

from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.observability import configure_logging


def port_in_use(host: str, port: int) -> str | None:
    """Why (host, port) cannot be bound, or None: checked before anything says it serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def main() -> None:
    settings = Settings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    configure_logging(settings.logging_config())
    problem = port_in_use(settings.tldw_host, settings.tldw_port)
    if problem is not None:
        logger.error("cannot serve on {}:{}: {} (another server on that port? set TLDW_PORT)", settings.tldw_host,
                     settings.tldw_port, problem)
        sys.exit(1)
    logger.info("serving on http://{}:{} (data dir {})", settings.tldw_host, settings.tldw_port, settings.data_dir)
    uvicorn.run(
        "tldw_Server_API.app.main:create_app", factory=True, host=settings.tldw_host, port=settings.tldw_port,
        workers=settings.tldw_workers, access_log=False, log_level="warning",
    )


if __name__ == "__main__":
    main()
