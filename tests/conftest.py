"""Every test process runs gRPC as the services do (see core/grpc_io.py)."""

import core.grpc_io  # noqa: F401  (first: gRPC reads its I/O settings at import)
