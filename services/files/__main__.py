"""`python -m services.files`: serve the files service on AQUEDUCT_FILES_ADDR."""

from services.common.runner import main
from services.files.server import from_env

main("files", lambda: from_env().run())
