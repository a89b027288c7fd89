"""Whether the real PostgreSQL and Redis of this machine answer, for tests that need them.

CI requires both (.ci/run starts them); elsewhere such tests skip with the reason.
"""

from __future__ import annotations

import socket

POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False
