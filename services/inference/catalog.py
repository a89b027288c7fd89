"""The live model registry, swapped whole when the models file is reloaded.

A request leases the snapshot that was current when it started and keeps its
backends to the end, however many reloads happen meanwhile. A reload builds a
new snapshot (reusing backends whose configuration did not change, so a local
model is not loaded twice and an upstream keeps its pool and health), starts
the new backends, swaps, and closes the old snapshot's unused backends once its
last request is done. A file that does not load leaves everything as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from services.inference import models_file
from services.inference.config import Settings
from services.inference.forwarded import LocalModelsPeer
from services.inference.generation import Backend
from services.inference.registry import (
    ModelRegistry,
    backend_key,
    build_registry,
    import_backends,
)

log = logging.getLogger(__name__)


class Catalog:
    def __init__(self, settings: Settings, peer: LocalModelsPeer | None = None) -> None:
        self.settings = settings
        self.peer = peer  # the worker that runs the local models, when not this one
        config = models_file.load(settings.models_config)
        import_backends(config, peer)
        self.current = build_registry(config, settings, None, peer)
        self._retiring: list[ModelRegistry] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        for backend in self.current.backends:
            await backend.start()

    @contextlib.contextmanager
    def lease(self) -> Iterator[ModelRegistry]:
        registry = self.current
        registry.in_flight += 1
        try:
            yield registry
        finally:
            registry.in_flight -= 1
            if registry.in_flight == 0 and registry in self._retiring:
                self._retire_now(registry)

    async def reload(self) -> bool:
        """Load the models file again; False (and a log line) if it could not be."""
        path = self.settings.models_config
        if path is None:
            log.info("no models file to reload (AQUEDUCT_MODELS_CONFIG is unset)")
            return False
        async with self._reload_lock:
            old = self.current
            try:
                config = await asyncio.to_thread(_load_with_backends, path, self.peer)
                reuse = {backend_key(m.spec): m for m in old.models}
                registry = build_registry(config, self.settings, reuse, self.peer)
            except Exception as error:
                log.error("models file not reloaded; keeping the current models: %s", error)
                return False
            fresh = registry.backends - old.backends
            try:
                for backend in fresh:
                    await backend.start()
            except Exception as error:
                log.error("models file not reloaded; a backend failed to start: %s", error)
                await _close_all(fresh)
                return False
            self.current = registry
            self._retiring.append(old)
            if old.in_flight == 0:
                self._retire_now(old)
            log.info(
                "models file reloaded",
                extra={
                    "models": [m.spec.name for m in registry.models],
                    "new_backends": len(fresh),
                },
            )
            return True

    def _retire_now(self, registry: ModelRegistry) -> None:
        self._retiring.remove(registry)
        in_use = set(self.current.backends)
        for other in self._retiring:
            in_use |= other.backends
        unused = registry.backends - in_use
        if unused:
            task = asyncio.get_running_loop().create_task(_close_all(unused))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        backends = set(self.current.backends)
        for registry in self._retiring:
            backends |= registry.backends
        self._retiring.clear()
        if self._closing:
            await asyncio.wait(list(self._closing))
        await _close_all(backends)


async def _close_all(backends: set[Backend]) -> None:
    for backend in backends:
        try:
            await backend.close()
        except Exception:
            log.exception("closing a model backend failed")


def _load_with_backends(path: Path, peer: LocalModelsPeer | None) -> models_file.ModelsConfig:
    """The models file, with the engines it needs imported (in a worker thread)."""
    config = models_file.load(path)
    import_backends(config, peer)
    return config
