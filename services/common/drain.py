"""A service's drain: while it shuts down, new work is refused, calls that
finish admitted work are still taken, and the drain ends as soon as nothing
is left to wait for.

grpc.aio's `server.stop(grace)` refuses every new call at once, settles
included, and waits the whole grace for any call still open, a key-event
watch included. So a service first drains on its own (ServiceHost.stop says
in which order), and calls `server.stop` only once it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from core.errors import Kind, ServiceError
from services.common.interceptors import Behavior, CallWrapper, Context, Handler

# How long a draining service keeps taking finishing calls after the last one:
# an edge sends a request's settle when the request ends, so settles for the work
# admitted before the drain come in a burst just after it starts.
FINISHING_QUIET_S = 1.0
RETRY_AFTER_S = "1"


def shutting_down() -> ServiceError:
    """A fresh error each time: a raised instance keeps its traceback's frames."""
    return ServiceError(
        Kind.UNAVAILABLE,
        "SHUTTING_DOWN",
        "The service is shutting down and takes no new calls; try again shortly.",
        metadata={"retry_after_s": RETRY_AFTER_S},
    )


class Drain:
    """The drain state of one service, kept by its DrainWrapper.

    `finishing` names the methods (`/package.Service/Method`) that complete
    work already admitted, taken until the drain ends; every other method of
    `services` is refused with UNAVAILABLE SHUTTING_DOWN once it begins. Other
    services on the server (health, reflection) are not counted nor refused.
    """

    def __init__(self, services: Iterable[str], finishing: Iterable[str] = ()) -> None:
        self.services = frozenset(services)
        self.finishing = frozenset(finishing)
        self.draining = False
        self.in_flight = 0  # calls of `services` running now
        self._last_activity = 0.0  # loop time of the drain's start or last finishing call

    def begin(self) -> None:
        self.draining = True
        self._last_activity = asyncio.get_running_loop().time()

    def finished_one(self) -> None:
        if self.draining:
            self._last_activity = asyncio.get_running_loop().time()

    def done(self) -> bool:
        """Nothing left: no call running, and no finishing call for FINISHING_QUIET_S
        (a service without finishing methods has none to wait for)."""
        if self.in_flight:
            return False
        if not self.finishing:
            return True
        return asyncio.get_running_loop().time() - self._last_activity >= FINISHING_QUIET_S

    async def wait(self, deadline: float) -> None:
        """Until done, or the loop time `deadline`; polls, as it runs once per process."""
        loop = asyncio.get_running_loop()
        while not self.done() and loop.time() < deadline:
            await asyncio.sleep(0.02)


class DrainWrapper(CallWrapper):
    """Counts the service's calls; while draining, refuses all but finishing ones.

    The refusal comes before the handler runs, so a refused call has read
    nothing and may be sent again, to another replica or after the restart.
    """

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        drain = self.drain
        if method.rpartition("/")[0].lstrip("/") not in drain.services:
            return behavior
        finishing = method in drain.finishing

        async def counted(request: Any, context: Context) -> Any:
            if drain.draining and not finishing:
                raise shutting_down()
            drain.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                drain.in_flight -= 1
                if finishing:
                    drain.finished_one()

        return counted
