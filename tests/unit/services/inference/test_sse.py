"""Server-Sent Events decoding across arbitrary chunk boundaries."""

from __future__ import annotations

import pytest

from services.inference.sse import EventTooLarge, SseDecoder

STREAM = b'data: {"a":1}\n\n: comment\nevent: x\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\n'
EVENTS = [b'{"a":1}', b'{"b":\n2}', b"[DONE]"]


def test_whole_stream() -> None:
    decoder = SseDecoder()
    assert decoder.feed(STREAM) == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_any_split(size: int) -> None:
    decoder = SseDecoder()
    events = []
    for start in range(0, len(STREAM), size):
        events += decoder.feed(STREAM[start : start + size])
    assert events == EVENTS


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    decoder = SseDecoder()
    events = []
    for byte in range(len(stream)):  # a CRLF split between two reads is still one line end
        events += decoder.feed(stream[byte : byte + 1])
    events += decoder.close()
    assert events == EVENTS


def test_an_event_without_its_blank_line_counts_at_the_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == [b"[DONE]"]


def test_lines_that_are_not_data_are_ignored() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"hello world\n\nretry: 5\n\n") == []


def test_a_line_that_never_ends_is_refused_past_the_bound() -> None:
    decoder = SseDecoder(max_bytes=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge, match="line is longer"):
        decoder.feed(b"x" * 200)


def test_an_event_of_many_lines_is_refused_past_the_bound() -> None:
    decoder = SseDecoder(max_bytes=1000)
    with pytest.raises(EventTooLarge, match="event is longer"):
        decoder.feed(b"data: " + b"x" * 400 + b"\n" + (b"data: " + b"y" * 400 + b"\n") * 2)
    assert SseDecoder(max_bytes=1000).feed(b"data: " + b"x" * 990 + b"\n\n") == [b"x" * 990]
