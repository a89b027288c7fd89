"""The Files API and file parts in chat, driven by the openai SDK over real sockets."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from aqueduct.files.v1 import files_pb2 as pb
from aqueduct.files.v1 import files_pb2_grpc

from edge.file_parts import render_text
from services.auth.keys import KeyRecord, hash_secret, new_key_id, new_secret, preview
from services.auth.store import KeyStore
from services.files.config import Settings as FilesSettings
from services.files.server import FilesServer
from tests.pdfs import corrupt_pdf, make_pdf
from tests.stack import ADMIN_KEY, Stack

MODEL = "smollm2-135m-instruct"
MB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ADMIN_TEAM = "admin"  # the bootstrap key's team
PDF_LINES = ["Field notes, page one.", "The launch code is VIOLET-7 and the moon is blue."]


def edge_with(stack: Stack, **overrides: Any) -> Stack:
    """A second edge on the stack's loop, with other settings (a copy of the
    stack whose `edge` is the new one; `ports` may point at other services)."""
    ports = dict(stack.ports)
    ports.update(overrides.pop("ports", {}))
    other = dataclasses.replace(stack, ports=ports, edge=None, edge_task=None)
    other.loop.run(other.start_edge(**overrides))
    return other


def stop_edge(other: Stack) -> None:
    async def stop() -> None:
        assert other.edge is not None and other.edge_task is not None
        other.edge.should_exit = True
        await other.edge_task

    other.loop.run(stop())


def sdk(base_url: str, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def big_bodies(stack: Stack) -> Iterator[openai.OpenAI]:
    """An edge with the contract's default body limit (64 MB), so the file-part
    limits (10 MB / 32 MB) are what a large inline file runs into."""
    other = edge_with(stack, max_body_bytes=64 * MB)
    yield sdk(other.base_url)
    stop_edge(other)


@pytest.fixture(scope="module")
def small_limits(stack: Stack) -> Iterator[tuple[openai.OpenAI, Path]]:
    """A files service with a 1 MB file limit and a 3 MB team quota, behind its own edge."""
    storage = stack.data_dir / "files-small"
    settings = FilesSettings(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{stack.data_dir / 'files-small.db'}",
        storage_dir=storage,
        max_file_bytes=1 * MB,
        team_quota_bytes=3 * MB,
    )

    async def start() -> tuple[FilesServer, int]:
        server = FilesServer(settings)  # grpc.aio objects bind to the running loop
        return server, await server.start()

    server, port = stack.loop.run(start())
    other = edge_with(stack, ports={"files": port})
    yield sdk(other.base_url), storage
    stop_edge(other)
    stack.loop.run(server.stop(0.5))


@pytest.fixture(scope="module")
def other_team(stack: Stack) -> openai.OpenAI:
    secret = new_secret()
    store = KeyStore(f"sqlite:///{stack.data_dir / 'aqueduct.db'}")
    record = KeyRecord(
        id=new_key_id(),
        name="other-team",
        team="other",
        preview=preview(secret),
        admin=False,
        models=None,
        created_at=int(time.time()),
    )
    store.insert(record, hash_secret(secret))
    store.close()
    return sdk(stack.base_url, secret)


@pytest.fixture(scope="module")
def files_stub(stack: Stack) -> Iterator[files_pb2_grpc.FilesServiceStub]:
    with grpc.insecure_channel(stack.address("files")) as channel:
        yield files_pb2_grpc.FilesServiceStub(channel)


def data_url(data: bytes, media: str) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# --- Files API ------------------------------------------------------------------


def test_upload_list_retrieve_content_delete_round_trip(client: openai.OpenAI) -> None:
    body = b"# Notes\n\nThe secret word is PINEAPPLE.\n"
    created = client.files.create(file=("notes.md", body, "text/markdown"), purpose="user_data")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename) == ("file", len(body), "notes.md")
    assert created.purpose == "user_data" and created.status == "processed"
    assert abs(created.created_at - time.time()) < 60 and created.expires_at is None

    assert created.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(created.id) == created
    content = client.files.content(created.id)
    assert content.content == body
    assert content.response.headers["content-type"] == "text/markdown"
    assert content.response.headers["content-length"] == str(len(body))
    assert "notes.md" in content.response.headers["content-disposition"]

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    assert created.id not in [f.id for f in client.files.list()]


def test_bare_paths_and_purpose_after_the_file(stack: Stack) -> None:
    # curl -F file=@x -F purpose=… may put the file first: still one streamed upload.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="late.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nhello\r\n"
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n--b--\r\n'
    )
    answer = httpx.post(
        f"{stack.base_url}/files",
        content=body,
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert answer.status_code == 200, answer.text
    file = answer.json()
    assert (file["filename"], file["purpose"], file["bytes"]) == ("late.txt", "assistants", 5)
    got = httpx.get(f"{stack.base_url}/files/{file['id']}/content", headers=AUTH)
    assert got.content == b"hello"
    assert httpx.delete(f"{stack.base_url}/files/{file['id']}", headers=AUTH).json()["deleted"]


def test_non_ascii_names_survive_and_truncated_bodies_store_nothing(
    client: openai.OpenAI, stack: Stack
) -> None:
    named = client.files.create(file=("résumé 2024 ✓.txt", b"cv"), purpose="user_data")
    assert client.files.retrieve(named.id).filename == "résumé 2024 ✓.txt"
    disposition = client.files.content(named.id).response.headers["content-disposition"]
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9" in disposition
    before = {f.id for f in client.files.list()}
    truncated = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="cut.txt"\r\n\r\n'
        b"the body stops here"
    )
    answer = httpx.post(
        f"{stack.base_url}/v1/files",
        content=truncated,
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert answer.status_code == 400 and "closing boundary" in answer.json()["error"]["message"]
    assert {f.id for f in client.files.list()} == before
    incoming = stack.data_dir / "files" / ".incoming"
    deadline = time.monotonic() + 5  # the cancelled upload cleans up asynchronously
    while list(incoming.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(incoming.glob("*.part")) == []


def test_list_filters_by_purpose_orders_and_pages(client: openai.OpenAI) -> None:
    ids = [
        client.files.create(file=(f"{i}.jsonl", b'{"i": %d}\n' % i), purpose="evals").id
        for i in range(3)
    ]
    client.files.create(file=("other.txt", b"x"), purpose="vision")
    first = client.files.list(purpose="evals", limit=2, order="asc")
    assert [f.id for f in first.data] == ids[:2] and first.has_more
    # The SDK follows `after` cursors page by page.
    assert [f.id for f in client.files.list(purpose="evals", limit=2, order="asc")] == ids
    assert [f.id for f in client.files.list(purpose="evals", order="desc")] == ids[::-1]


def test_expires_after_is_honoured(client: openai.OpenAI) -> None:
    created = client.files.create(
        file=("temp.txt", b"short-lived"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600
    batch = client.files.create(file=("batch.jsonl", b"{}\n"), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 24 * 3600


def test_expired_files_are_purged(
    stack: Stack, files_stub: files_pb2_grpc.FilesServiceStub
) -> None:
    def parts() -> Iterator[pb.UploadFileRequest]:
        yield pb.UploadFileRequest(
            metadata=pb.UploadFileMetadata(
                team=ADMIN_TEAM,
                filename="soon.txt",
                purpose=pb.FILE_PURPOSE_USER_DATA,
                expires_after_seconds=1,
            )
        )
        yield pb.UploadFileRequest(chunk=b"gone soon")

    file = files_stub.UploadFile(parts(), timeout=10).file
    blob = stack.data_dir / "files" / file.id[5:7] / file.id
    assert blob.exists()
    deadline = time.monotonic() + 10
    while blob.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not blob.exists(), "the purge task did not remove the expired file"
    with pytest.raises(grpc.RpcError) as caught:
        files_stub.GetFile(pb.GetFileRequest(team=ADMIN_TEAM, file_id=file.id), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_team_sees_only_its_own_files(client: openai.OpenAI, other_team: openai.OpenAI) -> None:
    mine = client.files.create(file=("mine.txt", b"private"), purpose="user_data")
    theirs = other_team.files.create(file=("theirs.txt", b"theirs"), purpose="user_data")
    assert mine.id not in [f.id for f in other_team.files.list()]
    assert [f.id for f in other_team.files.list()] == [theirs.id]
    for attempt in (
        lambda: other_team.files.retrieve(mine.id),
        lambda: other_team.files.content(mine.id),
        lambda: other_team.files.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:  # 404, never 403
            attempt()
        assert caught.value.status_code == 404
    with pytest.raises(openai.NotFoundError) as caught:
        other_team.chat.completions.create(
            model=MODEL,
            max_tokens=1,
            messages=[
                {"role": "user", "content": [{"type": "file", "file": {"file_id": mine.id}}]}
            ],
        )
    assert caught.value.body["param"] == "messages[0].content[0].file.file_id"  # type: ignore[index]
    assert client.files.retrieve(mine.id).id == mine.id


@pytest.mark.parametrize(
    ("fields", "files", "status", "param"),
    [
        ({}, {"file": ("a.txt", b"x")}, 400, "purpose"),
        ({"purpose": "homework"}, {"file": ("a.txt", b"x")}, 400, "purpose"),
        ({"purpose": "user_data"}, {}, 400, "file"),
        ({"purpose": "user_data", "file": "not a file part"}, {}, 400, "file"),
        (
            {
                "purpose": "user_data",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "5",
            },
            {"file": ("a.txt", b"x")},
            400,
            "expires_after[seconds]",
        ),
        (
            {
                "purpose": "user_data",
                "expires_after[anchor]": "last_active_at",
                "expires_after[seconds]": "3600",
            },
            {"file": ("a.txt", b"x")},
            400,
            "expires_after[anchor]",
        ),
        ({"purpose": "user_data"}, {"file": ("empty.txt", b"")}, 400, "file"),
    ],
)
def test_bad_uploads_are_400_naming_the_field(
    stack: Stack, fields: dict[str, str], files: dict[str, Any], status: int, param: str
) -> None:
    answer = httpx.post(
        f"{stack.base_url}/v1/files", data=fields, files=files or {"x": ("", b"")}, headers=AUTH
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"]


def test_upload_needs_multipart_and_a_key(stack: Stack) -> None:
    answer = httpx.post(f"{stack.base_url}/v1/files", json={"purpose": "user_data"}, headers=AUTH)
    assert answer.status_code == 415
    answer = httpx.post(
        f"{stack.base_url}/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "user_data"}
    )
    assert answer.status_code == 401


def test_per_file_limit_and_team_quota(small_limits: tuple[openai.OpenAI, Path]) -> None:
    client, storage = small_limits
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.bin", b"x" * (MB + 1)), purpose="user_data")
    assert caught.value.status_code == 413
    assert "1.0 MB" in caught.value.message and "big.bin" in caught.value.message
    assert stored_files(storage) == []  # nothing half-written is left behind

    kept = [
        client.files.create(file=(f"{i}.bin", b"x" * MB), purpose="user_data") for i in range(3)
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("over.bin", b"x"), purpose="user_data")
    assert caught.value.code == "storage_quota_exceeded"
    assert "3.0 MB" in caught.value.message
    assert len(stored_files(storage)) == 3
    client.files.delete(kept[0].id)
    assert client.files.create(file=("fits.bin", b"x"), purpose="user_data").bytes == 1


# --- File parts in chat ------------------------------------------------------------


def ask(client: openai.OpenAI, *content: dict[str, Any]) -> int:
    """prompt_tokens of a one-token chat whose user message has these parts."""
    completion = client.chat.completions.create(
        model=MODEL,
        max_tokens=1,
        temperature=0,
        messages=[{"role": "user", "content": list(content)}],
    )
    assert completion.usage is not None
    return completion.usage.prompt_tokens


def test_pdf_reaches_the_model_as_text_by_file_id_and_by_base64(
    client: openai.OpenAI, files_stub: files_pb2_grpc.FilesServiceStub
) -> None:
    pdf = make_pdf(PDF_LINES)
    uploaded = client.files.create(file=("codes.pdf", pdf, "application/pdf"), purpose="user_data")
    # The extraction method, as any gRPC caller sees it:
    extracted = files_stub.ExtractFileContent(
        pb.ExtractFileContentRequest(team=ADMIN_TEAM, file_id=uploaded.id), timeout=30
    )
    assert extracted.text == "\n".join(PDF_LINES)
    assert (extracted.filename, extracted.bytes) == ("codes.pdf", len(pdf))
    question = {"type": "text", "text": "What is the launch code?"}
    # What the model must get: the question, then the file's text under its name.
    as_text = ask(
        client, question, {"type": "text", "text": render_text("codes.pdf", extracted.text)}
    )
    by_id = ask(client, question, {"type": "file", "file": {"file_id": uploaded.id}})
    by_data = ask(
        client,
        question,
        {
            "type": "file",
            "file": {"filename": "codes.pdf", "file_data": data_url(pdf, "application/pdf")},
        },
    )
    assert by_id == by_data == as_text
    assert as_text > ask(client, question) + 15  # the file's text is really in the prompt


def test_a_file_part_over_10_mb_is_400_naming_file_size_and_limit(
    big_bodies: openai.OpenAI,
) -> None:
    too_big = b"a" * (10 * MB + 1)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(
            big_bodies,
            {
                "type": "file",
                "file": {"filename": "huge.txt", "file_data": data_url(too_big, "text/plain")},
            },
        )
    error = caught.value
    assert error.code == "file_too_large"
    assert (
        "'huge.txt'" in error.message
        and str(len(too_big)) in error.message
        and "10 MB" in error.message
    )
    uploaded = big_bodies.files.create(file=("huge-upload.txt", too_big), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        ask(big_bodies, {"type": "file", "file": {"file_id": uploaded.id}})
    assert "'huge-upload.txt'" in caught.value.message and "10 MB" in caught.value.message
    big_bodies.files.delete(uploaded.id)


def test_file_parts_over_32_mb_together_are_400(big_bodies: openai.OpenAI) -> None:
    nine = b"b" * (9 * MB)
    ids = [
        big_bodies.files.create(file=(f"part{i}.txt", nine), purpose="user_data").id
        for i in range(3)
    ]
    parts = [{"type": "file", "file": {"file_id": file_id}} for file_id in ids]
    inline = {
        "type": "file",
        "file": {"filename": "last.txt", "file_data": data_url(nine, "text/plain")},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        ask(big_bodies, *parts, inline)
    error = caught.value
    assert error.code == "file_parts_too_large"
    assert (
        "'last.txt'" in error.message and str(36 * MB) in error.message and "32 MB" in error.message
    )
    for file_id in ids:
        big_bodies.files.delete(file_id)


def test_corrupt_or_encrypted_pdf_is_400_naming_the_file(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(
            client,
            {
                "type": "file",
                "file": {
                    "filename": "broken.pdf",
                    "file_data": data_url(corrupt_pdf(), "application/pdf"),
                },
            },
        )
    assert caught.value.code == "file_corrupt" and "'broken.pdf'" in caught.value.message
    stored = client.files.create(file=("stored-broken.pdf", corrupt_pdf()), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, {"type": "file", "file": {"file_id": stored.id}})
    assert "'stored-broken.pdf'" in caught.value.message
    assert caught.value.body["param"] == "messages[0].content[0].file.file_id"  # type: ignore[index]


def test_an_image_file_part_is_refused_because_the_model_reads_text(client: openai.OpenAI) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    with pytest.raises(openai.BadRequestError) as caught:
        ask(
            client,
            {
                "type": "file",
                "file": {"filename": "cat.png", "file_data": data_url(png, "image/png")},
            },
        )
    assert caught.value.code == "unsupported_content_type"
    assert "'cat.png'" in caught.value.message and "image_url" in caught.value.message


def test_extraction_over_grpc_for_inline_files(files_stub: files_pb2_grpc.FilesServiceStub) -> None:
    text = files_stub.ExtractFileContent(
        pb.ExtractFileContentRequest(
            inline=pb.InlineFile(
                filename="page.html", content_type="text/html", data=b"<p>Hi <b>there</b></p>"
            )
        ),
        timeout=30,
    )
    assert text.text == "Hi there"
    image = files_stub.ExtractFileContent(
        pb.ExtractFileContentRequest(
            inline=pb.InlineFile(filename="x.gif", data=b"GIF89a" + b"\x00" * 10)
        ),
        timeout=30,
    )
    assert image.image_data_url.startswith("data:image/gif;base64,")
    with pytest.raises(grpc.RpcError) as caught:
        files_stub.ExtractFileContent(
            pb.ExtractFileContentRequest(
                inline=pb.InlineFile(filename="x.docx", data=b"PK\x03\x04rest")
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x.docx'" in (caught.value.details() or "")
