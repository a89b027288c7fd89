"""Token counts when an upstream reports none: an estimate, never zero for text.

About four bytes of UTF-8 per token is what BPE tokenizers average on English
and code (OpenAI's own rule of thumb); chat formatting adds a few tokens per
message. A streamed completion is at least one token per content chunk, since
servers emit each token as soon as it is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.inference.generation import Message

BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators
TOKENS_PER_REPLY = 3  # the assistant header the reply is primed with


def text_tokens(text: str) -> int:
    size = len(text.encode())
    return -(-size // BYTES_PER_TOKEN)


def prompt_tokens(messages: Iterable[Message]) -> int:
    return TOKENS_PER_REPLY + sum(
        TOKENS_PER_MESSAGE + text_tokens(m.content) + (text_tokens(m.name) if m.name else 0)
        for m in messages
    )


def completion_tokens(text_bytes: int, chunks: int) -> int:
    return max(chunks, -(-text_bytes // BYTES_PER_TOKEN))
