"""The web console's static files, served at /ui/ from the package (no CDN).

Everything the browser runs ships in edge/console/ (the charting library
vendored under vendor/); the page talks to the edge's own API with the key the
user signed in with, kept in sessionStorage. A strict Content-Security-Policy
allows scripts, styles and requests from this origin only.
"""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "console"
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class ConsoleFiles:
    """StaticFiles for edge/console/ (index.html for /ui/), with the headers above."""

    def __init__(self) -> None:
        self.files = StaticFiles(directory=STATIC_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.files(scope, receive, with_headers)
