from __future__ import annotations

import base64
import json

import pytest

from services.files.extract import ExtractError, extract, html_text
from tests.pdfs import corrupt_pdf, encrypted_pdf, make_pdf

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_pdf_text_is_extracted_in_order() -> None:
    data = make_pdf(["Quarterly report", "Revenue grew by 42 percent (audited)."])
    result = extract("report.pdf", "application/pdf", data)
    assert result.text == "Quarterly report\nRevenue grew by 42 percent (audited)."
    assert result.image_data_url is None


def test_pdf_is_recognised_by_its_bytes_whatever_the_name() -> None:
    result = extract("upload.bin", "application/octet-stream", make_pdf(["hidden pdf"]))
    assert result.text == "hidden pdf"


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (encrypted_pdf(["secret"]), "FILE_ENCRYPTED", "encrypted"),
        (corrupt_pdf(), "FILE_CORRUPT", "not a readable PDF"),
        (b"this is not a pdf at all", "FILE_CORRUPT", "no PDF header"),
    ],
)
def test_unreadable_pdfs_name_the_file_and_why(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(ExtractError) as caught:
        extract("broken.pdf", "application/pdf", data)
    assert caught.value.reason == reason
    assert "'broken.pdf'" in caught.value.message
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("filename", "media", "data", "text"),
    [
        ("notes.txt", "text/plain", b"plain words", "plain words"),
        ("readme.md", "", b"# Title\n\n*bold*", "# Title\n\n*bold*"),
        ("table.csv", "text/csv", b"a,b\n1,2\n", "a,b\n1,2\n"),
        ("data.json", "application/json", b'{"k": [1, 2]}', '{"k": [1, 2]}'),
        ("bom.txt", "", "\ufeffwith bom".encode(), "with bom"),
        ("script.py", "", b"print('hi')\n", "print('hi')\n"),
    ],
)
def test_text_formats_come_back_as_text(filename: str, media: str, data: bytes, text: str) -> None:
    assert extract(filename, media, data).text == text


def test_html_keeps_only_the_visible_text() -> None:
    page = (
        "<html><head><title>T</title><style>p {color: red}</style>"
        "<script>alert('x')</script></head><body><h1>Heading</h1>"
        "<p>First   paragraph &amp; more.</p><ul><li>one</li><li>two</li></ul></body></html>"
    )
    assert extract("page.html", "text/html", page.encode()).text == html_text(page)
    assert html_text(page) == "T\nHeading\nFirst paragraph & more.\none\ntwo"


def test_images_become_data_urls() -> None:
    result = extract("cat.png", "", PNG)
    assert result.text is None
    assert result.image_data_url == "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    ("filename", "media", "data", "reason"),
    [
        ("bad.json", "application/json", b"{not json", "FILE_CORRUPT"),
        ("latin.txt", "text/plain", "café".encode("latin-1"), "FILE_CORRUPT"),
        ("sheet.xlsx", "", b"PK\x03\x04" + b"\x00" * 20, "FILE_TYPE_UNSUPPORTED"),
        ("blob.bin", "application/octet-stream", b"\x00\x01\x02\xff", "FILE_TYPE_UNSUPPORTED"),
        ("fake.png", "image/png", b"not an image", "FILE_TYPE_UNSUPPORTED"),
    ],
)
def test_unreadable_files_are_refused_with_a_reason(
    filename: str, media: str, data: bytes, reason: str
) -> None:
    with pytest.raises(ExtractError) as caught:
        extract(filename, media, data)
    assert caught.value.reason == reason
    assert f"'{filename}'" in caught.value.message


def test_json_text_is_passed_verbatim() -> None:
    document = json.dumps({"a": 1, "b": "two"}, indent=2)
    assert extract("x.json", "", document.encode()).text == document
