"""`python -m services.inference`: serve models on AQUEDUCT_INFERENCE_ADDR."""

from services.common.runner import main
from services.inference.config import Settings
from services.inference.server import InferenceServer

main("inference", lambda: InferenceServer(Settings.from_env()).run())
