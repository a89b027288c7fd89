"""Mutual TLS for the internal gRPC plane, turned on per process by three files.

AQUEDUCT_TLS_CA (PEM bundle of the CA that signs every Aqueduct certificate),
AQUEDUCT_TLS_CERT (this process's certificate chain) and AQUEDUCT_TLS_KEY (its
private key): all three or none. When set, every gRPC server requires a client
certificate signed by that CA (a plaintext or certificate-less caller is
refused during the handshake) and every gRPC client presents this process's
certificate and checks the server's against the CA. A caller's identity is the
Common Name (CN) of its certificate's subject: `edge`, `admin`, or the name of
an internal caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from core.config import ConfigError

VARIABLES = ("AQUEDUCT_TLS_CA", "AQUEDUCT_TLS_CERT", "AQUEDUCT_TLS_KEY")


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def tls_from_env() -> TlsFiles | None:
    """The process's TLS files, read once at start-up; None when TLS is off."""
    paths = {name: os.environ.get(name, "").strip() for name in VARIABLES}
    given = [name for name, path in paths.items() if path]
    if not given:
        return None
    if len(given) != len(VARIABLES):
        missing = ", ".join(n for n in VARIABLES if n not in given)
        raise ConfigError(f"TLS needs all of {', '.join(VARIABLES)}; missing {missing}")
    contents = []
    for name in VARIABLES:
        try:
            contents.append(Path(paths[name]).read_bytes())
        except OSError as error:
            raise ConfigError(f"{name}={paths[name]!r} cannot be read: {error}") from None
    return TlsFiles(*contents)
