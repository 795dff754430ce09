"""`python -m tldw_Server_API`: serve the app with uvicorn on TLDW_HOST:TLDW_PORT."""

from __future__ import annotations

import uvicorn
from loguru import logger

from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.observability import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.logging_config())
    logger.info("serving on http://{}:{} (data dir {})", settings.tldw_host, settings.tldw_port, settings.data_dir)
    uvicorn.run(
        "tldw_Server_API.app.main:create_app", factory=True, host=settings.tldw_host, port=settings.tldw_port,
        workers=settings.tldw_workers, access_log=False, log_level="warning",
    )


if __name__ == "__main__":
    main()
