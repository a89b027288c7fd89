"""Ids taken from URL paths (and file ids from bodies), checked by shape and
length before any gRPC call.

An id that no service could have made is answered 404 here, in OpenAI's shape:
a service would echo it in its error, and a 10 KB id in the error overflows
gRPC's metadata limit (which came back as a 429).
"""

from __future__ import annotations

import re

from starlette.requests import Request

from edge.errors import ApiError

# Generated ids (files `file-…`, keys `key_…`) are short ASCII words.
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Model ids and team names are chosen by operators: any text, but not any length.
MAX_NAME_CHARS = 256


def not_found(what: str, value: str, param: str) -> ApiError:
    shown = value if len(value) <= 64 else value[:64] + "…"
    return ApiError(
        404,
        f"No {what} with id '{shown}'.",
        type="not_found_error",
        param=param,
        code=f"{what}_not_found",
    )


def generated_id(request: Request, name: str, what: str, param: str) -> str:
    """A path parameter holding an id a service generated (file, key)."""
    value: str = request.path_params[name]
    if not SAFE_ID.fullmatch(value):
        raise not_found(what, value, param)
    return value


def named_id(request: Request, name: str, what: str, param: str) -> str:
    """A path parameter holding an operator's name (model, team)."""
    value: str = request.path_params[name]
    if not value or len(value) > MAX_NAME_CHARS:
        raise not_found(what, value, param)
    return value
