"""`python -m services.files.extract_worker`: one extraction process.

The files service keeps a few of these running and talks to each over its
stdin/stdout, one job at a time. A frame is a 4-byte big-endian length and that
many bytes. A job is a JSON header frame (`filename`, `content_type`) followed
by a data frame; the answer is one JSON frame, `{"text"|"image_data_url": …}`
or `{"reason", "message"}`. End of input ends the process.
"""

from __future__ import annotations

import contextlib
import resource
import struct
import sys
from typing import Any, BinaryIO

import orjson

from services.files.extract import ExtractError, extract

# Address space of one worker: a decompression bomb fails here, not in the service.
MEMORY_LIMIT_BYTES = 2 * 1024**3
_LENGTH = struct.Struct(">I")


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    body = stream.read(length)
    return body if len(body) == length else None


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def answer(header: dict[str, Any], data: bytes) -> dict[str, Any]:
    filename = str(header.get("filename", "file"))
    try:
        result = extract(filename, str(header.get("content_type", "")), data)
    except ExtractError as error:
        return {"reason": error.reason, "message": error.message}
    except MemoryError:
        return {
            "reason": "FILE_TOO_COMPLEX",
            "message": f"File '{filename}' needs too much memory to read.",
        }
    except Exception as error:
        return {
            "reason": "FILE_CORRUPT",
            "message": f"File '{filename}' could not be read ({error}).",
        }
    if result.image_data_url is not None:
        return {"image_data_url": result.image_data_url}
    return {"text": result.text or ""}


def main() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while (header := read_frame(source)) is not None:
        data = read_frame(source)
        if data is None:
            return
        sink.write(frame(orjson.dumps(answer(orjson.loads(header), data))))
        sink.flush()


if __name__ == "__main__":
    main()
