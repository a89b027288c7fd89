"""Shared `__main__` entry: logging, uvloop, config errors as one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from core import logs, tracing
from core.config import ConfigError, env
from services.common.private import restrict_umask


def main(service: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    logs.setup(service, env("AQUEDUCT_LOG_LEVEL", "INFO"))
    tracing.configure(service)
    restrict_umask()  # data at rest stays private, also what libraries create

    async def entry() -> None:
        await run()  # build inside the loop: grpc.aio objects bind to it

    try:
        uvloop.run(entry())
    except ConfigError as error:
        print(f"{service}: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
