"""Turn a file's bytes into what a model can read: text, or an image data URL.

Pure functions, CPU-bound and without I/O: `services.files.extractor` runs them
in a worker process with a time limit. Failures raise `ExtractError` with a
stable reason and a message that names the file and says why.
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import logging
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass

from core.media import image_type

SUPPORTED = "PDF, plain text, Markdown, CSV, JSON, HTML, PNG, JPEG, GIF, WebP"

TEXT_TYPES = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/csv": "text",
    "text/tab-separated-values": "text",
    "application/json": "json",
    "application/x-ndjson": "text",
    "application/jsonl": "text",
    "text/html": "html",
    "application/xhtml+xml": "html",
}
TEXT_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".md": "text",
    ".markdown": "text",
    ".csv": "text",
    ".tsv": "text",
    ".jsonl": "text",
    ".json": "json",
    ".html": "html",
    ".htm": "html",
}
# Containers we recognise but cannot read; named so the error can say what it is.
KNOWN_BINARY = (
    (b"PK\x03\x04", "a ZIP archive (e.g. DOCX, XLSX, PPTX)"),
    (b"\xd0\xcf\x11\xe0", "an OLE document (e.g. DOC, XLS)"),
    (b"\x1f\x8b", "a gzip archive"),
)


class ExtractError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Extracted:
    text: str | None = None
    image_data_url: str | None = None


def extract(filename: str, content_type: str, data: bytes) -> Extracted:
    kind, media = detect(filename, content_type, data)
    if kind == "pdf":
        return Extracted(text=pdf_text(filename, data))
    if kind == "image":
        return Extracted(image_data_url=f"data:{media};base64,{base64.b64encode(data).decode()}")
    text = decode_text(filename, data)
    if kind == "json":
        try:
            json.loads(text)
        except ValueError as error:
            raise ExtractError(
                "FILE_CORRUPT", f"File '{filename}' is not valid JSON: {error}."
            ) from None
    if kind == "html":
        text = html_text(text)
    return Extracted(text=text)


def detect(filename: str, content_type: str, data: bytes) -> tuple[str, str]:
    """(kind, media type): the bytes decide first, then the declared type, then
    the name; undeclared UTF-8 text is read as plain text."""
    declared = content_type.split(";")[0].strip().lower()
    if b"%PDF-" in data[:1024]:
        return "pdf", "application/pdf"
    media = image_type(data)
    if media is not None:
        return "image", media
    if declared == "application/pdf" or filename.lower().endswith(".pdf"):
        raise ExtractError(
            "FILE_CORRUPT", f"File '{filename}' is not a readable PDF: it has no PDF header."
        )
    if declared.startswith("image/"):
        raise ExtractError(
            "FILE_TYPE_UNSUPPORTED",
            f"File '{filename}' is declared as {declared} but is not a PNG, JPEG, GIF or WebP "
            "image.",
        )
    for magic, what in KNOWN_BINARY:
        if data.startswith(magic):
            raise ExtractError(
                "FILE_TYPE_UNSUPPORTED",
                f"File '{filename}' is {what}, which cannot be read; supported: {SUPPORTED}.",
            )
    if declared in TEXT_TYPES:
        return TEXT_TYPES[declared], declared
    extension = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension in TEXT_EXTENSIONS:
        return TEXT_EXTENSIONS[extension], mimetypes.guess_type(filename)[0] or "text/plain"
    if (
        not declared or declared.startswith("text/") or declared == "application/octet-stream"
    ) and (b"\x00" not in data[:8192] and _is_utf8(data)):
        return "text", "text/plain"
    raise ExtractError(
        "FILE_TYPE_UNSUPPORTED",
        f"File '{filename}' ({declared or 'unknown type'}) is not a supported type; "
        f"supported: {SUPPORTED}.",
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_text(filename: str, data: bytes) -> str:
    encoding = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise ExtractError(
            "FILE_CORRUPT",
            f"File '{filename}' is not UTF-8 text (invalid byte at offset {error.start}).",
        ) from None


def pdf_text(filename: str, data: bytes) -> str:
    from pypdf import PdfReader  # imported here: the worker process preloads this module

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _decrypts_without_password(reader):
            raise ExtractError(
                "FILE_ENCRYPTED", f"File '{filename}' is an encrypted PDF and needs a password."
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractError:
        raise
    except Exception as error:  # pypdf raises many types for damaged files
        raise ExtractError(
            "FILE_CORRUPT",
            f"File '{filename}' is not a readable PDF ({type(error).__name__}: {error}).",
        ) from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise ExtractError(
            "FILE_NO_TEXT",
            f"File '{filename}' has no extractable text (a scanned PDF needs OCR first).",
        )
    return text


def _decrypts_without_password(reader: object) -> bool:
    decrypt: Callable[[str], object] = reader.decrypt  # type: ignore[attr-defined]
    try:
        return bool(decrypt(""))
    except Exception:  # missing AES support, unknown algorithm: still encrypted
        return False


_BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "td",
        "th",
        "tr",
        "ul",
    ]
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg"})


class _TextCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """The visible text of an HTML document: no tags, scripts or styles."""
    collector = _TextCollector()
    collector.feed(markup)
    collector.close()
    lines = (
        re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(collector.parts).split("\n")
    )
    return "\n".join(line for line in lines if line)
