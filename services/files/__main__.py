"""`python -m services.files`: serve the files service on AQUEDUCT_FILES_ADDR."""

import core.grpc_io  # noqa: F401  (first: gRPC reads its I/O settings at import)

# isort: split
from services.common.runner import main
from services.files.server import from_env

main("files", lambda: from_env().run())
