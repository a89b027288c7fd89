"""Auth's two stores, Redis (limits) and the database (keys, ledger), as seen by
requests: a fault in either is answered UNAVAILABLE with a reason saying which
(the edge answers 503), logged once when the outage starts and once when it
ends, never with a traceback per request. AuthServer reports each one's state
through gRPC health (services/auth/server.py)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import sqlalchemy.exc

from core.errors import Kind, ServiceError

log = logging.getLogger(__name__)

DATABASE_FAULTS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # unreachable, restarting, locked, out of connections
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free
)


class Dependency:
    """Whether one store answers, as the last call or probe found it."""

    def __init__(
        self, name: str, reason: str, message: str, faults: tuple[type[BaseException], ...]
    ) -> None:
        self.name = name
        self.reason = reason
        self.message = message
        self.faults = faults
        self.up = True
        self._lock = threading.Lock()  # store calls run in worker threads too

    def failed(self, error: BaseException) -> ServiceError:
        with self._lock:
            was_up, self.up = self.up, False
        if was_up:
            log.warning(f"{self.name} unavailable", extra={"error": repr(error)})
        return ServiceError(Kind.UNAVAILABLE, self.reason, self.message)

    def answered(self) -> None:
        if self.up:  # the usual case: no lock
            return
        with self._lock:
            was_down, self.up = not self.up, True
        if was_down:
            log.info(f"{self.name} available again")

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around a call to the store (sync or async code): its faults become UNAVAILABLE."""
        try:
            yield
        except self.faults as error:
            raise self.failed(error) from None
        self.answered()


def redis_dependency() -> Dependency:
    """The limits store when it is Redis."""
    # Imported here: auth without Redis never loads the client (~8 MiB for its whole life).
    import redis.exceptions

    return limits_dependency(
        (
            redis.exceptions.ConnectionError,  # also BusyLoadingError (a restart loading its data)
            redis.exceptions.TimeoutError,
            redis.exceptions.ReadOnlyError,  # a replica promoted or demoted under us
        )
    )


def limits_dependency(faults: tuple[type[BaseException], ...] = ()) -> Dependency:
    """The limits store; without Redis (no `faults`) it is this process and never down."""
    return Dependency(
        "redis",
        "LIMITS_UNAVAILABLE",
        "Rate limits cannot be checked: the limits store (Redis) is unavailable; retry shortly.",
        faults,
    )


def database_dependency() -> Dependency:
    return Dependency(
        "database",
        "DATABASE_UNAVAILABLE",
        "The key and usage database is unavailable; retry shortly.",
        DATABASE_FAULTS,
    )
