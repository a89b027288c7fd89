"""`python -m services.auth`: serve the auth service on AQUEDUCT_AUTH_ADDR."""

import core.grpc_io  # noqa: F401  (first: gRPC reads its I/O settings at import)

# isort: split
from services.auth.config import Settings
from services.auth.server import AuthServer
from services.common.runner import main

main("auth", lambda: AuthServer(Settings.from_env()).run())
