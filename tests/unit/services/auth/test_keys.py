from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from core.errors import Kind, ServiceError
from services.auth.authority import KeyAuthority, bootstrap_admin
from services.auth.keys import KeyRecord, hash_secret, new_key_id, new_secret, preview
from services.auth.store import KeyStore


def test_secrets_are_prefixed_long_and_unique() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("sk-aq-") and len(s) >= 6 + 43 for s in secrets)


def test_hash_is_stable_and_preview_hides_the_middle() -> None:
    secret = new_secret()
    assert hash_secret(secret) == hash_secret(secret) != hash_secret(secret.upper())
    assert secret[12:-4] not in preview(secret)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keys = KeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    keys.migrate()
    return keys


def record(**fields: object) -> KeyRecord:
    base: dict[str, object] = {
        "id": new_key_id(),
        "name": "n",
        "team": "t",
        "preview": "p",
        "admin": False,
        "models": None,
    }
    return KeyRecord(**{**base, **fields})  # type: ignore[arg-type]


def verify(store: KeyStore, secret: str) -> KeyRecord:
    return asyncio.run(KeyAuthority(store).verify(secret))[0]


def test_store_keeps_only_the_hash(store: KeyStore, tmp_path: Path) -> None:
    secret = new_secret()
    store.insert(record(), hash_secret(secret))
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()
    assert verify(store, secret).name == "n"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"revoked": True}, "KEY_REVOKED"),
        ({"expires_at": 1}, "KEY_EXPIRED"),
    ],
)
def test_revoked_and_expired_keys_are_refused(
    store: KeyStore, fields: dict[str, object], reason: str
) -> None:
    secret = new_secret()
    store.insert(record(**fields), hash_secret(secret))
    with pytest.raises(ServiceError) as caught:
        verify(store, secret)
    assert caught.value.kind is Kind.UNAUTHENTICATED and caught.value.reason == reason


def test_unknown_key_is_refused(store: KeyStore) -> None:
    with pytest.raises(ServiceError) as caught:
        verify(store, "sk-aq-unknown")
    assert caught.value.reason == "KEY_UNKNOWN"


def test_first_start_creates_one_admin_key_file(
    store: KeyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap_admin(store, tmp_path, None)
    path = tmp_path / "bootstrap-key"
    secret = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret in capsys.readouterr().out
    assert verify(store, secret).admin
    bootstrap_admin(store, tmp_path, None)  # second start: nothing new, nothing printed
    assert path.read_text().strip() == secret
    assert capsys.readouterr().out == ""


def test_configured_bootstrap_key_is_idempotent(store: KeyStore, tmp_path: Path) -> None:
    secret = "sk-aq-operator-chosen-secret-000000000000000000000"
    bootstrap_admin(store, tmp_path, secret)
    first = verify(store, secret)
    bootstrap_admin(store, tmp_path, secret)
    assert verify(store, secret).id == first.id and first.admin
    assert not (tmp_path / "bootstrap-key").exists()
