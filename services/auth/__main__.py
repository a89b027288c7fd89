"""`python -m services.auth`: serve the auth service on AQUEDUCT_AUTH_ADDR."""

from services.auth.config import Settings
from services.auth.server import AuthServer
from services.common.runner import main

main("auth", lambda: AuthServer(Settings.from_env()).run())
