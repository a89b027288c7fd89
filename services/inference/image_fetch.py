"""Fetch a remote image for a model configured to get images inline
(`inline_images` in the models file), instead of passing its URL on.

The gateway then makes a request a client chose the target of, so every fetch
is fenced: http(s) only; the host's addresses are resolved once and each must
be public (not loopback, private, link-local, shared, reserved or multicast)
unless the model allows private ones, and the connection goes to an address
that was checked (no second lookup a DNS rebinding could answer differently);
one GET, no redirects, no compression; the whole fetch within `timeout_s`; the
body within `max_bytes` (and the request's images within `max_total_bytes`),
read no further; an image/* Content-Type and PNG, JPEG, WebP or GIF bytes.
Every refusal is INVALID_ARGUMENT naming the part and saying why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

import httptools

from core.errors import Kind, ServiceError
from core.media import image_type
from services.inference.generation import ChatRequest, ImageInput
from services.inference.models_file import InlineImages

MAX_HEADER_BYTES = 16 * 1024
READ_BYTES = 64 * 1024
FETCHES_AT_ONCE = 4  # per request


class FetchRefused(Exception):
    """Why one image could not be fetched (the message is for the client)."""


class Budget:
    """Bytes the images of one request may still take (shared by its fetches)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total


class ImageFetcher:
    def __init__(self, settings: InlineImages) -> None:
        self.settings = settings
        self._tls = ssl.create_default_context()  # once: building one costs milliseconds

    async def fetch(self, url: str, param: str, budget: Budget) -> tuple[str, bytes]:
        """(media type, bytes) of the image at `url`; a ServiceError naming `param`
        when it is refused."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await self._fetch(url, budget)
        except FetchRefused as refused:
            raise _refused(param, url, str(refused)) from None
        except TimeoutError:
            raise _refused(
                param, url, f"it did not arrive within {self.settings.timeout_s:g} s"
            ) from None
        except (OSError, ssl.SSLError) as error:
            raise _refused(
                param, url, f"the connection failed ({error.strerror or error})"
            ) from None

    async def _fetch(self, url: str, budget: Budget) -> tuple[str, bytes]:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise FetchRefused("its port is not valid") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused("only http and https URLs are fetched")
        host = parts.hostname
        tls = parts.scheme == "https"
        port = port or (443 if tls else 80)
        addresses = await self._addresses(host, port)
        reader, writer = await self._connect(addresses, port, host if tls else None)
        try:
            path = parts.path or "/"
            if parts.query:
                path = f"{path}?{parts.query}"
            host_header = f"[{host}]" if ":" in host else host
            if parts.port:
                host_header = f"{host_header}:{port}"
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: aqueduct\r\n"
                "Accept: image/png, image/jpeg, image/webp, image/gif\r\n"
                "Accept-Encoding: identity\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            answer = _Answer(self.settings.max_bytes, budget)
            while not answer.complete:
                data = await reader.read(READ_BYTES)
                if not data:
                    answer.closed()
                    break
                answer.feed(data)
        finally:
            writer.close()
        data = b"".join(answer.body)
        media = image_type(data)
        if media is None:
            raise FetchRefused("what it sent is not a PNG, JPEG, WebP or GIF image")
        return media, data

    async def _addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror:
            raise FetchRefused(f"its host '{host}' does not resolve") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.settings.allow_private:
            for address in addresses:
                if not _public(address):
                    raise FetchRefused(
                        f"its host resolves to {address}, which is not a public address"
                    )
        if not addresses:
            raise FetchRefused(f"its host '{host}' does not resolve")
        return addresses

    async def _connect(
        self, addresses: list[str], port: int, server_hostname: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the first checked address that answers."""
        failure: OSError | None = None
        for address in addresses:
            try:
                return await asyncio.open_connection(
                    address,
                    port,
                    ssl=self._tls if server_hostname else None,
                    server_hostname=server_hostname,
                    limit=READ_BYTES,
                )
            except OSError as error:
                failure = error
        assert failure is not None
        raise failure


class _Answer:
    """The answer as it arrives: headers checked as soon as they are in, the
    body bounded. httptools swallows what its callbacks raise, so they note a
    refusal and `feed` raises it."""

    def __init__(self, limit: int, budget: Budget) -> None:
        self.limit = limit
        self.budget = budget
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.headers_done = False
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.refusal: str | None = None

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.refusal is None:
                raise FetchRefused("its server sent a malformed HTTP answer") from None
        if self.refusal is not None:
            raise FetchRefused(self.refusal)

    def closed(self) -> None:
        """The server closed the connection: a body delimited by that is whole."""
        if not self.headers_done:
            raise FetchRefused("its server closed the connection before answering")
        length = self.headers.get("content-length", "")
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if chunked or (length.isdigit() and int(length) != self.size):
            raise FetchRefused("its server closed the connection before sending all of it")
        self.complete = True

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEADER_BYTES:
            self._refuse(f"its headers are larger than {MAX_HEADER_BYTES // 1024} KiB")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        status = self.parser.get_status_code()
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        length = self.headers.get("content-length", "")
        if status != 200:
            moved = " (redirects are not followed)" if 300 <= status < 400 else ""
            self._refuse(f"its server answered HTTP {status}{moved}")
        elif not content_type.startswith("image/"):
            self._refuse(f"its Content-Type is '{content_type[:100]}', not an image type")
        elif self.headers.get("content-encoding", "identity").lower() != "identity":
            self._refuse("its server compressed it although asked not to")
        elif length.isdigit() and int(length) > self.limit:
            self._refuse(f"it is larger than {_mb(self.limit)} ({length} bytes)")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.budget.left -= len(body)
        if self.size > self.limit:
            self._refuse(f"it is larger than {_mb(self.limit)}")
        elif self.budget.left < 0:
            self._refuse(f"the request's images are larger than {_mb(self.budget.total)} in all")
        elif self.refusal is None:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def _refuse(self, why: str) -> None:
        if self.refusal is None:
            self.refusal = why


async def inline_remote_images(fetcher: ImageFetcher, request: ChatRequest) -> ChatRequest:
    """The request with every remote image URL replaced by the image's bytes."""
    budget = Budget(fetcher.settings.max_total_bytes)
    gate = asyncio.Semaphore(FETCHES_AT_ONCE)

    async def fetched(part: ImageInput, param: str) -> ImageInput:
        async with gate:
            media, data = await fetcher.fetch(part.url, param, budget)
        return dataclasses.replace(part, url="", data=data, media_type=media)

    tasks: dict[tuple[int, int], asyncio.Task[ImageInput]] = {}
    try:
        async with asyncio.TaskGroup() as group:
            for i, message in enumerate(request.messages):
                for j, part in enumerate(message.parts):
                    if isinstance(part, ImageInput) and part.url:
                        param = f"messages[{i}].content[{j}]"
                        tasks[i, j] = group.create_task(fetched(part, param))
    except* ServiceError as failed:
        raise failed.exceptions[0] from None
    messages = tuple(
        dataclasses.replace(
            message,
            parts=tuple(
                tasks[i, j].result() if (i, j) in tasks else part
                for j, part in enumerate(message.parts)
            ),
        )
        if message.parts
        else message
        for i, message in enumerate(request.messages)
    )
    return dataclasses.replace(request, messages=messages)


def has_remote_images(request: ChatRequest) -> bool:
    return any(
        isinstance(part, ImageInput) and part.url
        for message in request.messages
        for part in message.parts
    )


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def _refused(param: str, url: str, why: str) -> ServiceError:
    shown = url if len(url) <= 200 else url[:200] + "…"
    return ServiceError(
        Kind.INVALID_ARGUMENT,
        "IMAGE_FETCH_FAILED",
        f"The image at '{shown}' in {param} could not be fetched: {why}.",
        param=param,
    )
