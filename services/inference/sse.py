"""Server-Sent Events decoding, incremental: bytes in as they arrive, data out.

Only `data:` fields matter to an OpenAI-compatible stream; comments, `event:`,
`id:` and `retry:` lines are skipped. Lines end in LF, CRLF or CR; an event ends
at a blank line and yields its data lines joined by LF.

A line, and an event's data, may be at most MAX_EVENT_BYTES: an upstream that
never ends a line cannot make us hold its whole stream.
"""

from __future__ import annotations

MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(ValueError):
    """A line or an event longer than the decoder takes."""


class SseDecoder:
    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = b""
        self._data: list[bytes] = []
        self._data_bytes = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Every event completed by `chunk`, as the bytes of its data."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: wait for more.
            held = buffer.endswith(b"\r")
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        *lines, self._buffer = buffer.split(b"\n")
        if len(self._buffer) > self.max_bytes:
            raise EventTooLarge(f"an event-stream line is longer than {self._limit()}")
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data, self._data_bytes = [], 0
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
                self._data_bytes += len(value)
                if self._data_bytes > self.max_bytes:
                    raise EventTooLarge(f"an event is longer than {self._limit()}")
        return events

    def _limit(self) -> str:
        return f"{self.max_bytes / 2**20:g} MiB"

    def close(self) -> list[bytes]:
        """At the end of the body: an event left without its blank line still counts."""
        events = self.feed(b"\n\n")
        self._buffer = b""
        return events
