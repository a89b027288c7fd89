"""AQUEDUCT_TLS_*: all three files or none, failing fast with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError
from core.tls import tls_from_env
from services.common.identity import Access


def test_unset_means_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AQUEDUCT_TLS_CA", "AQUEDUCT_TLS_CERT", "AQUEDUCT_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert tls_from_env() is None


def test_a_partial_set_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(b"ca")
    monkeypatch.setenv("AQUEDUCT_TLS_CA", str(tmp_path / "ca.pem"))
    monkeypatch.delenv("AQUEDUCT_TLS_CERT", raising=False)
    monkeypatch.delenv("AQUEDUCT_TLS_KEY", raising=False)
    with pytest.raises(ConfigError, match="AQUEDUCT_TLS_CERT, AQUEDUCT_TLS_KEY"):
        tls_from_env()


def test_an_unreadable_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AQUEDUCT_TLS_CA", "AQUEDUCT_TLS_CERT"):
        (tmp_path / name).write_bytes(b"x")
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("AQUEDUCT_TLS_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match="AQUEDUCT_TLS_KEY"):
        tls_from_env()


def test_files_are_read_once_into_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, body in (
        ("AQUEDUCT_TLS_CA", b"c"),
        ("AQUEDUCT_TLS_CERT", b"e"),
        ("AQUEDUCT_TLS_KEY", b"k"),
    ):
        (tmp_path / name).write_bytes(body)
        monkeypatch.setenv(name, str(tmp_path / name))
    tls = tls_from_env()
    assert tls is not None and (tls.ca, tls.cert, tls.key) == (b"c", b"e", b"k")


def test_method_rules_override_service_rules_and_unknown_services_are_open() -> None:
    access = Access({"p.Svc": frozenset({"edge"})}, {"/p.Svc/Verify": frozenset({"edge", "files"})})
    assert access.allowed("/p.Svc/Reserve") == {"edge"}
    assert access.allowed("/p.Svc/Verify") == {"edge", "files"}
    assert access.allowed("/grpc.health.v1.Health/Check") is None
