"""A 500 MB upload streams: the files service (its own process, as in production)
and the edge keep their memory flat while the bytes pass through."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.processes import free_port, rss_kib, serving, spawn, stop, wait_for
from tests.stack import ADMIN_KEY, Stack

MB = 1024 * 1024
UPLOAD_BYTES = 500 * MB
BOUNDARY = "aqueduct-memory-test"


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as control:
        control.write("5")


def multipart(size: int) -> Iterator[bytes]:
    """A multipart body with a `size`-byte file, produced 1 MiB at a time."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    block = bytes(range(256)) * (MB // 256)
    for _ in range(size // MB):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(base_url: str, size: int) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/files",
        content=multipart(size),
        headers={
            "Authorization": f"Bearer {ADMIN_KEY}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
        timeout=300,
    )


def test_a_500_mb_upload_keeps_memory_flat(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "files.log"
    process = spawn(
        ["-m", "services.files"],
        {"AQUEDUCT_FILES_ADDR": address, "AQUEDUCT_DATA_DIR": str(tmp_path)},
        log,
    )
    try:
        wait_for(lambda: serving(address), 60, "files SERVING")
        stack = Stack(data_dir=tmp_path, files_address=address).start()
        try:
            assert upload(stack.base_url, 4 * MB).status_code == 200  # warm every code path
            files_before = rss_kib(process.pid, "VmRSS")
            reset_peak(process.pid)
            edge_before = rss_kib(os.getpid(), "VmRSS")
            reset_peak(os.getpid())

            answer = upload(stack.base_url, UPLOAD_BYTES)

            files_growth_mb = (rss_kib(process.pid, "VmHWM") - files_before) / 1024
            edge_growth_mb = (rss_kib(os.getpid(), "VmHWM") - edge_before) / 1024
            print(f"growth: files {files_growth_mb:.1f} MB, edge {edge_growth_mb:.1f} MB")
            assert answer.status_code == 200, answer.text
            file = answer.json()
            assert file["bytes"] == UPLOAD_BYTES
            stored = tmp_path / "files" / file["id"][5:7] / file["id"]
            assert stored.stat().st_size == UPLOAD_BYTES
            assert files_growth_mb < 64, f"files service grew by {files_growth_mb:.0f} MB"
            # The edge shares this process with the test client and the other
            # in-process services, so its bound is looser; still far below 500 MB.
            assert edge_growth_mb < 128, f"edge process grew by {edge_growth_mb:.0f} MB"
            deleted = httpx.delete(
                f"{stack.base_url}/v1/files/{file['id']}",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30,
            )
            assert deleted.status_code == 200 and not stored.exists()
        finally:
            stack.stop()
    finally:
        assert stop(process) == 0, log.read_text()
