"""A redis-server of the test's own, on a free 127.0.0.1 port, that the test can
stop and start again (same port, same data: it saves on shutdown and loads at
start, as a production Redis with persistence does)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import free_port, wait_for

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        log = (self.directory / "redis.log").open("ab")
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port)]
        args += ["--dir", str(self.directory), "--save", "3600 1", "--appendonly", "no"]
        args += ["--protected-mode", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self.answers, 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """SIGTERM: Redis saves its data and exits (a clean restart keeps the slots)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        self.process = None

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def blip(self, seconds: float) -> None:
        """Down for `seconds`, then back with the data it had."""
        self.stop()
        time.sleep(seconds)
        self.start()
