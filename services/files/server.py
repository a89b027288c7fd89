"""Build and run the files service.

It answers health and reflection today; the file methods (upload, list, get,
delete, text extraction) join `aqueduct.files.v1.FilesService` with the Files API.
"""

from __future__ import annotations

from aqueduct.files.v1 import files_pb2

from services.common.config import listen_address
from services.common.grpc_server import GrpcService, ServiceHost

SERVICE_NAME = files_pb2.DESCRIPTOR.services_by_name["FilesService"].full_name


class FilesServer(GrpcService):
    name = "files"

    def __init__(self, address: str) -> None:
        self.host = ServiceHost(address, [SERVICE_NAME])


def from_env() -> FilesServer:
    return FilesServer(listen_address("files"))
