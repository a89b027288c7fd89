"""The models file (AQUEDUCT_MODELS_CONFIG): parsed and checked at start-up.

Every problem is reported with the file name and the key path, e.g.
`models.yaml: models[1].upstreams[0].url: required`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from core.config import ConfigError

BACKENDS = ("local", "openai", "local-embedding")
# What each backend can do: chat completions, embeddings.
OPERATIONS = {
    "local": frozenset({"chat"}),
    "openai": frozenset({"chat", "embeddings"}),
    "local-embedding": frozenset({"embeddings"}),
}
MODEL_KEYS = {
    "name",
    "backend",
    "aliases",
    "timeout_s",
    "connect_timeout_s",
    "upstreams",
    "path",
    "fallbacks",
    "owned_by",
    "capabilities",
    "inline_images",
}
INLINE_IMAGES_KEYS = {"allow_private", "max_mb", "total_mb", "timeout_s"}
# What a model may take besides text (the models file's `capabilities`), and
# the backends that can pass such input on.
MEDIA_CAPABILITIES = ("vision", "audio")
MEDIA_BACKENDS = frozenset({"openai"})
UPSTREAM_KEYS = {"url", "api_key", "api_key_env", "model"}
DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "multilingual-e5-small"


@dataclass(frozen=True)
class UpstreamSpec:
    url: str
    api_key: str | None = field(repr=False)  # never in a log line
    model: str | None


@dataclass(frozen=True)
class InlineImages:
    """`inline_images`: the gateway fetches remote image URLs for this model and
    sends the images as data URLs (services/inference/image_fetch.py)."""

    allow_private: bool = False  # loopback, private, link-local... addresses
    max_bytes: int = 10 * 1024 * 1024  # one image
    max_total_bytes: int = 32 * 1024 * 1024  # all images of one request
    timeout_s: float = 10.0  # one image: lookup, connect, request and the whole body


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str
    aliases: tuple[str, ...] = ()
    timeout_s: float = 600.0  # the whole request, retries and streaming included
    connect_timeout_s: float = 10.0  # one TCP (and TLS) connect to an upstream
    upstreams: tuple[UpstreamSpec, ...] = ()
    path: Path | None = None  # local: a GGUF file; default the bundled model
    fallbacks: tuple[str, ...] = ()
    owned_by: str = "aqueduct"
    # "vision" (image parts), "audio" (input_audio parts); (): text only.
    capabilities: tuple[str, ...] = ()
    inline_images: InlineImages | None = None  # None: remote image URLs pass on as given

    @property
    def operations(self) -> frozenset[str]:
        """What the backend serves: "chat", "embeddings"."""
        return OPERATIONS[self.backend]


@dataclass(frozen=True)
class ModelsConfig:
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)


BUILT_IN = ModelsConfig(
    (
        ModelSpec(name=DEFAULT_LOCAL_MODEL, backend="local"),
        ModelSpec(name=DEFAULT_EMBEDDING_MODEL, backend="local-embedding"),
    )
)


def load(path: Path | None) -> ModelsConfig:
    if path is None:
        return BUILT_IN
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse(document, str(path))


def parse(document: Any, source: str) -> ModelsConfig:
    def fail(where: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {where}: {problem}")

    if not isinstance(document, dict):
        raise fail("(top level)", "must be a mapping with a 'models' list")
    unknown = set(document) - {"models"}
    if unknown:
        raise fail(sorted(unknown)[0], "unknown key")
    entries = document.get("models")
    if not isinstance(entries, list) or not entries:
        raise fail("models", "must be a non-empty list")
    models = [_model(entry, f"models[{i}]", fail) for i, entry in enumerate(entries)]
    seen: dict[str, str] = {}
    for i, model in enumerate(models):
        for model_id in (model.name, *model.aliases):
            if model_id in seen:
                raise fail(f"models[{i}]", f"id '{model_id}' is already used by {seen[model_id]}")
            seen[model_id] = f"models[{i}]"
    by_id = {model_id: m for m in models for model_id in (m.name, *m.aliases)}
    for i, model in enumerate(models):
        for j, fallback in enumerate(model.fallbacks):
            if fallback not in seen:
                raise fail(f"models[{i}].fallbacks[{j}]", f"unknown model '{fallback}'")
            if not model.operations & by_id[fallback].operations:
                raise fail(
                    f"models[{i}].fallbacks[{j}]",
                    f"'{fallback}' (backend {by_id[fallback].backend}) cannot serve what "
                    f"'{model.name}' (backend {model.backend}) serves",
                )
    return ModelsConfig(tuple(models))


def _model(entry: Any, where: str, fail: Any) -> ModelSpec:
    if not isinstance(entry, dict):
        raise fail(where, "must be a mapping")
    for key in entry:
        if key not in MODEL_KEYS:
            raise fail(f"{where}.{key}", "unknown key")
    name = _string(entry, "name", where, fail, required=True)
    backend = _string(entry, "backend", where, fail, required=True)
    if backend not in BACKENDS:
        raise fail(f"{where}.backend", f"must be one of {', '.join(BACKENDS)}; got '{backend}'")
    timeout = _seconds(entry, "timeout_s", 600.0, where, fail)
    connect_timeout = _seconds(entry, "connect_timeout_s", 10.0, where, fail)
    upstreams = entry.get("upstreams")
    if backend == "openai":
        if not isinstance(upstreams, list) or not upstreams:
            raise fail(f"{where}.upstreams", "required: a non-empty list for backend openai")
        parsed = tuple(
            _upstream(u, f"{where}.upstreams[{i}]", fail) for i, u in enumerate(upstreams)
        )
    elif upstreams is not None:
        raise fail(f"{where}.upstreams", f"not allowed for backend {backend}")
    else:
        parsed = ()
    path = entry.get("path")
    if path is not None and (backend != "local" or not isinstance(path, str)):
        raise fail(f"{where}.path", "a GGUF file path, only for backend local")
    return ModelSpec(
        name=name,
        backend=backend,
        aliases=_strings(entry, "aliases", where, fail),
        timeout_s=timeout,
        connect_timeout_s=connect_timeout,
        upstreams=parsed,
        path=Path(path) if path else None,
        fallbacks=_strings(entry, "fallbacks", where, fail),
        owned_by=_string(entry, "owned_by", where, fail) or "aqueduct",
        capabilities=_capabilities(entry, backend, where, fail),
        inline_images=_inline_images(entry, where, fail),
    )


def _inline_images(entry: dict[str, Any], where: str, fail: Any) -> InlineImages | None:
    value = entry.get("inline_images")
    if value is None or value is False:
        return None
    where = f"{where}.inline_images"
    if "vision" not in (entry.get("capabilities") or []):
        raise fail(where, "needs 'vision' in capabilities")
    if value is True:
        return InlineImages()
    if not isinstance(value, dict):
        raise fail(where, "must be true or a mapping of allow_private, max_mb, total_mb, timeout_s")
    for key in value:
        if key not in INLINE_IMAGES_KEYS:
            raise fail(f"{where}.{key}", "unknown key")
    allow = value.get("allow_private", False)
    if not isinstance(allow, bool):
        raise fail(f"{where}.allow_private", "must be true or false")
    mb = 1024 * 1024
    return InlineImages(
        allow_private=allow,
        max_bytes=_whole(value, "max_mb", 10, where, fail) * mb,
        max_total_bytes=_whole(value, "total_mb", 32, where, fail) * mb,
        timeout_s=_seconds(value, "timeout_s", 10.0, where, fail),
    )


def _whole(entry: dict[str, Any], key: str, default: int, where: str, fail: Any) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(f"{where}.{key}", "must be a positive whole number")
    return value


def _capabilities(entry: dict[str, Any], backend: str, where: str, fail: Any) -> tuple[str, ...]:
    values = _strings(entry, "capabilities", where, fail)
    for i, value in enumerate(values):
        if value not in MEDIA_CAPABILITIES:
            raise fail(
                f"{where}.capabilities[{i}]",
                f"unknown capability '{value}'; known: {', '.join(MEDIA_CAPABILITIES)}",
            )
    if values and backend not in MEDIA_BACKENDS:
        raise fail(
            f"{where}.capabilities",
            f"backend {backend} takes text only; capabilities need backend openai",
        )
    return tuple(dict.fromkeys(values))


def _seconds(entry: dict[str, Any], key: str, default: float, where: str, fail: Any) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise fail(f"{where}.{key}", "must be a positive number of seconds")
    return float(value)


def _upstream(entry: Any, where: str, fail: Any) -> UpstreamSpec:
    if not isinstance(entry, dict):
        raise fail(where, "must be a mapping")
    for key in entry:
        if key not in UPSTREAM_KEYS:
            raise fail(f"{where}.{key}", "unknown key")
    url = _string(entry, "url", where, fail, required=True)
    if not url.startswith(("http://", "https://")):
        raise fail(f"{where}.url", "must start with http:// or https://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError as error:
        raise fail(f"{where}.url", f"is not a valid URL ({error})") from None
    if not parts.hostname:
        raise fail(f"{where}.url", "has no host")
    if parts.query or parts.fragment:
        raise fail(f"{where}.url", "must not have a query or fragment")
    api_key = _string(entry, "api_key", where, fail)
    env_name = _string(entry, "api_key_env", where, fail)
    if api_key and env_name:
        raise fail(where, "give api_key or api_key_env, not both")
    if env_name:
        api_key = os.environ.get(env_name, "")
        if not api_key:
            raise fail(f"{where}.api_key_env", f"environment variable {env_name} is not set")
    if api_key and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
        raise fail(
            f"{where}.api_key_env" if env_name else f"{where}.api_key",
            "must be printable ASCII without spaces (it is sent in an HTTP header)",
        )
    return UpstreamSpec(
        url=url.rstrip("/"), api_key=api_key, model=_string(entry, "model", where, fail)
    )


def _string(entry: dict[str, Any], key: str, where: str, fail: Any, required: bool = False) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            raise fail(f"{where}.{key}", "required")
        return ""
    if not isinstance(value, str) or not value:
        raise fail(f"{where}.{key}", "must be a non-empty string")
    return value


def _strings(entry: dict[str, Any], key: str, where: str, fail: Any) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(f"{where}.{key}", "must be a list of non-empty strings")
    return tuple(value)
