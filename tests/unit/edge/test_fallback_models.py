"""The chat body's `models`: fallbacks tried in order after `model`."""

from __future__ import annotations

from typing import Any

import pytest

from edge.chat_request import parse_chat_request
from edge.errors import ApiError
from edge.request_fields import MAX_FALLBACK_MODELS

HI = [{"role": "user", "content": "hi"}]


def test_models_become_fallback_models() -> None:
    call = parse_chat_request({"model": "a", "messages": HI, "models": ["b", "c"]})
    assert list(call.request.fallback_models) == ["b", "c"]
    assert list(parse_chat_request({"model": "a", "messages": HI}).request.fallback_models) == []


@pytest.mark.parametrize("models", ["b", [""], [1], ["x"] * (MAX_FALLBACK_MODELS + 1), {"b": 1}])
def test_bad_models_are_refused(models: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request({"model": "a", "messages": HI, "models": models})
    assert caught.value.status == 400 and caught.value.param == "models"
