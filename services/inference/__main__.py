"""`python -m services.inference`: serve models on AQUEDUCT_INFERENCE_ADDR."""

import core.grpc_io  # noqa: F401  (first: gRPC reads its I/O settings at import)

# isort: split
from services.common.runner import main
from services.inference.config import Settings
from services.inference.server import InferenceServer

main("inference", lambda: InferenceServer(Settings.from_env()).run())
