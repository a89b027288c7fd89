"""`inline_images`: for a model so configured, the gateway fetches a remote
image itself and sends it upstream as a data URL, within its fences: public
addresses only unless allowed, image types only, size and time limits, no
redirects. Other models still pass URLs on unfetched."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.stack import Stack

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(8192)
BIG = b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024 + 1)
# path -> (status, content type, body, headers)
ROUTES: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    "/cat.png": (200, "image/png", PNG, {}),
    "/page.html": (200, "text/html", b"<html></html>", {}),
    "/big.png": (200, "image/png", BIG, {}),
    "/liar.png": (200, "image/png", b"this is text, not a PNG", {}),
    "/moved.png": (302, "text/plain", b"", {"Location": "/cat.png"}),
    "/gone.png": (404, "text/plain", b"no", {}),
}


class ImageHandler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        ImageHandler.hits.append(self.path)
        if self.path.startswith("/slow.png"):
            time.sleep(2.0)
        route = self.path.partition("?")[0]
        status, media, body, headers = ROUTES.get(route, (200, "image/png", PNG, {}))
        self.send_response(status)
        self.send_header("Content-Type", media)
        if route != "/big.png":  # one answer without a length: delimited by the close
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):  # the gateway stopped reading: that is the point
            self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def images() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("inline").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[openai.OpenAI]:
    data_dir = Path(tmp_path_factory.mktemp("inline-images"))
    config = data_dir / "models.yaml"
    up = f'    upstreams: [{{url: "{upstream.url}"}}]\n'
    config.write_text(
        "models:\n"
        "  - name: fetcher\n"
        "    backend: openai\n"
        "    capabilities: [vision]\n"
        "    inline_images: {allow_private: true, max_mb: 1, total_mb: 2, timeout_s: 1}\n"
        f"{up}"
        "  - name: public-only\n"
        "    backend: openai\n"
        "    capabilities: [vision]\n"
        "    inline_images: true\n"
        f"{up}"
        "  - name: passer\n"
        "    backend: openai\n"
        "    capabilities: [vision]\n"
        f"{up}"
    )
    stack = Stack(data_dir=data_dir, models_config=config).start()
    yield stack.sdk()
    stack.stop()


def ask(client: openai.OpenAI, model: str, *urls: str, **extra: Any) -> Any:
    content = [{"type": "text", "text": "Describe."}] + [
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}} for url in urls
    ]
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        **extra,
    )


def sent_images(upstream: FakeUpstream) -> list[dict[str, Any]]:
    (message,) = upstream.received[-1]["messages"]
    return [p["image_url"] for p in message["content"] if p["type"] == "image_url"]


def test_a_remote_image_goes_upstream_as_a_data_url(
    client: openai.OpenAI, upstream: FakeUpstream, images: str
) -> None:
    ask(client, "fetcher", f"{images}/cat.png?v=1")
    expected = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    assert sent_images(upstream) == [{"url": expected, "detail": "low"}]
    assert "/cat.png?v=1" in ImageHandler.hits
    stream = ask(client, "fetcher", f"{images}/cat.png", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert sent_images(upstream) == [{"url": expected, "detail": "low"}]


def test_models_without_the_flag_never_fetch(
    client: openai.OpenAI, upstream: FakeUpstream, images: str
) -> None:
    before = len(ImageHandler.hits)
    url = f"{images}/never.png"
    ask(client, "passer", url)
    assert sent_images(upstream) == [{"url": url, "detail": "low"}]
    assert len(ImageHandler.hits) == before


def test_private_addresses_are_refused_unless_allowed(
    client: openai.OpenAI, upstream: FakeUpstream, images: str
) -> None:
    before, hits = len(upstream.received), len(ImageHandler.hits)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "public-only", f"{images}/cat.png")
    assert caught.value.code == "image_fetch_failed"
    assert caught.value.body["param"] == "messages[0].content[1]"  # type: ignore[index]
    assert "127.0.0.1, which is not a public address" in caught.value.message
    assert len(upstream.received) == before and len(ImageHandler.hits) == hits


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/page.html", "Content-Type is 'text/html'"),
        ("/liar.png", "not a PNG, JPEG, WebP or GIF image"),
        ("/big.png", "larger than 1 MB"),
        ("/moved.png", "HTTP 302 (redirects are not followed)"),
        ("/gone.png", "HTTP 404"),
        ("/slow.png", "within 1 s"),
    ],
)
def test_what_is_not_a_small_image_in_time_is_a_400(
    client: openai.OpenAI, upstream: FakeUpstream, images: str, path: str, why: str
) -> None:
    before = len(upstream.received)
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "fetcher", f"{images}{path}", f"{images}/cat.png")
    assert why in caught.value.message, caught.value.message
    assert caught.value.body["param"] == "messages[0].content[1]"  # type: ignore[index]
    assert time.monotonic() - started < 1.9  # the slow one is given up on, not waited for
    assert len(upstream.received) == before


def test_all_images_of_a_request_share_one_size_budget(client: openai.OpenAI, images: str) -> None:
    # Each 0.75 MB image is within 1 MB; three are over the 2 MB for the request.
    ROUTES["/part.png"] = (200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(768 * 1024), {})
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "fetcher", *(f"{images}/part.png?{i}" for i in range(3)))
    assert "larger than 2 MB in all" in caught.value.message
