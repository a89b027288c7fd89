"""`python -m edge`: serve the OpenAI-compatible HTTP API."""

from __future__ import annotations

import sys

import uvicorn

from edge.app import create_app
from edge.config import Settings
from services.common import logs
from services.common.config import ConfigError, env


def main() -> None:
    logs.setup("edge", env("AQUEDUCT_LOG_LEVEL", "INFO"))
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"edge: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
