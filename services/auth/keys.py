"""API keys as the domain sees them: secrets, hashes, records. No I/O here."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

SECRET_PREFIX = "sk-aq-"


def new_secret() -> str:
    """`sk-aq-` followed by 32 random bytes, url-safe base64 (43 characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # Secrets carry 256 random bits, so a plain SHA-256 cannot be brute-forced;
    # a slow password hash would only put milliseconds on every cache miss.
    return hashlib.sha256(secret.encode()).hexdigest()


def preview(secret: str) -> str:
    return f"{secret[:10]}…{secret[-4:]}"


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Limits:
    """The proto's Limits, field for field (core.limit_names.LIMIT_NAMES)."""

    rpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    max_concurrent: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        """Name -> limit; dataclasses.asdict would deep-copy, on every request."""
        return {
            "rpm": self.rpm,
            "input_tpm": self.input_tpm,
            "output_tpm": self.output_tpm,
            "max_concurrent": self.max_concurrent,
        }


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    team: str
    preview: str
    admin: bool
    models: tuple[str, ...] | None  # None: every model
    limits: Limits = field(default_factory=Limits)
    expires_at: int | None = None
    created_at: int = 0
    last_used_at: int | None = None
    revoked: bool = False

    def usable_at(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)
