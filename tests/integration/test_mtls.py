"""Mutual TLS on the internal plane, with real processes and certificates made here.

Every service and the edge get their own certificate (CN = identity) from a test
CA. Refused: a plaintext client, a TLS client without a certificate, one whose
certificate another CA signed, and one whose identity the method does not name.
Served: the edge (the OpenAI SDK end to end), the admin CLI's identity on admin
methods, and an internal caller that presents an API key, scoped to that key's
models and team whatever its messages say.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc
from aqueduct.files.v1 import files_pb2, files_pb2_grpc
from aqueduct.inference.v1 import inference_pb2, inference_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certs import CertificateAuthority, Issued
from tests.fake_upstream import FakeUpstream
from tests.processes import free_port, spawn, stop, wait_for

KEY = "sk-aq-" + "m" * 40
ADMIN = {"authorization": f"Bearer {KEY}"}
SERVICES = ("auth", "files", "inference")


@pytest.fixture()
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("mtls").start()
    yield fake
    fake.stop()


class Plane:
    """Auth, files, inference and the edge, each with its own certificate."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream) -> None:
        self.ca = CertificateAuthority(tmp_path / "pki")
        self.addresses = {s: f"127.0.0.1:{free_port()}" for s in SERVICES}
        models = tmp_path / "models.yaml"
        models.write_text(
            "models:\n  - name: fake\n    backend: openai\n"
            f"    upstreams: [{{url: '{upstream.url}'}}]\n"
            "  - name: other\n    backend: openai\n"
            f"    upstreams: [{{url: '{upstream.url}'}}]\n"
        )
        self.port = free_port()
        (tmp_path / "data").mkdir()
        common = {
            "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
            "AQUEDUCT_MODELS_CONFIG": str(models),
            "AQUEDUCT_BOOTSTRAP_KEY": KEY,
            "AQUEDUCT_HTTP_PORT": str(self.port),
            **{f"AQUEDUCT_{s.upper()}_ADDR": a for s, a in self.addresses.items()},
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        for name in (*SERVICES, "edge"):
            env = {**common, **self.ca.issue(name).env()}
            module = "edge" if name == "edge" else f"services.{name}"
            self.processes.append(spawn(["-m", module], env, tmp_path / f"{name}.log"))
        self.base = f"http://127.0.0.1:{self.port}"
        admin = self.ca.issue("admin")
        for name, address in self.addresses.items():
            wait_for(lambda a=address: self.serving(a, admin), 60, f"{name} SERVING over mTLS")
        wait_for(self.edge_ready, 30, "the edge ready")

    def edge_ready(self) -> bool:
        """As a load balancer would wait: the edge reaches every service over its
        own channels. (The test's SERVING checks above use the test's channels;
        the edge's may still be backing off from a connect tried before a
        service listened, up to 1 s, and a call then would be 503.)"""
        try:
            return httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    @staticmethod
    def serving(address: str, issued: Issued) -> bool:
        with secure(address, issued) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


def secure(address: str, issued: Issued | None, ca: Path | None = None) -> grpc.Channel:
    """A TLS channel presenting `issued`'s certificate (None: no certificate)."""
    root = (ca or (issued.ca if issued else None)).read_bytes()  # type: ignore[union-attr]
    if issued is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    else:
        _, cert, key = issued.read()
        credentials = grpc.ssl_channel_credentials(root, key, cert)
    return grpc.secure_channel(address, credentials)


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture()
def plane(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Plane]:
    running = Plane(tmp_path, upstream)
    yield running
    running.stop()


def verify(channel: grpc.Channel) -> object:
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    return lambda: stub.VerifyKey(auth_pb2.VerifyKeyRequest(key=KEY), timeout=5)


def test_the_edge_serves_end_to_end_over_mtls(plane: Plane) -> None:
    client = openai.OpenAI(base_url=f"{plane.base}/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    created = httpx.post(
        f"{plane.base}/v1/admin/keys", headers=ADMIN, json={"name": "x"}, timeout=10
    )
    assert created.status_code == 201  # admin calls through the edge's identity
    uploaded = client.files.create(file=("a.txt", b"hello"), purpose="assistants")
    assert client.files.retrieve(uploaded.id).id == uploaded.id


def test_plaintext_and_certificate_less_callers_are_refused(plane: Plane, tmp_path: Path) -> None:
    stranger_ca = CertificateAuthority(tmp_path / "stranger", name="stranger-ca")
    forged_edge = stranger_ca.issue("edge")
    for address in plane.addresses.values():
        with grpc.insecure_channel(address) as channel:
            assert code_of(verify(channel)) == grpc.StatusCode.UNAVAILABLE
        with secure(address, None, ca=plane.ca.ca_path) as channel:
            assert code_of(verify(channel)) == grpc.StatusCode.UNAVAILABLE
        # "edge", but not from our CA (it also trusts our CA for the server: only
        # the client certificate is foreign)
        with secure(address, forged_edge, ca=plane.ca.ca_path) as channel:
            assert code_of(verify(channel)) == grpc.StatusCode.UNAVAILABLE


def test_identities_are_authorized_per_method(plane: Plane) -> None:
    auth = plane.addresses["auth"]
    admin, intruder, edge = (plane.ca.issue(n) for n in ("admin", "intruder", "edge"))
    with secure(auth, edge) as channel:
        assert code_of(verify(channel)) == grpc.StatusCode.OK
    for who in (admin, intruder):
        with secure(auth, who) as channel:
            assert code_of(verify(channel)) == grpc.StatusCode.PERMISSION_DENIED
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            reserve = lambda s=stub: s.ReserveQuota(  # noqa: E731
                auth_pb2.ReserveQuotaRequest(key_id="key_x"), timeout=5
            )
            assert code_of(reserve) == grpc.StatusCode.PERMISSION_DENIED
    listing = auth_pb2.ListKeysRequest()
    with secure(auth, admin) as channel:
        admin_stub = auth_pb2_grpc.AdminServiceStub(channel)
        assert admin_stub.ListKeys(listing, metadata=tuple(ADMIN.items()), timeout=5).keys
    with secure(auth, intruder) as channel:
        intruder_stub = auth_pb2_grpc.AdminServiceStub(channel)
        call = lambda: intruder_stub.ListKeys(  # noqa: E731
            listing, metadata=tuple(ADMIN.items()), timeout=5
        )
        assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED  # even with an admin key


def test_an_internal_caller_with_a_key_gets_that_keys_models_and_team(plane: Plane) -> None:
    created = httpx.post(
        f"{plane.base}/v1/admin/keys",
        headers=ADMIN,
        json={"name": "batch", "team": "data", "models": ["fake"]},
        timeout=10,
    ).json()
    other_team = httpx.post(
        f"{plane.base}/v1/admin/keys", headers=ADMIN, json={"name": "o", "team": "ops"}, timeout=10
    ).json()
    theirs = openai.OpenAI(base_url=f"{plane.base}/v1", api_key=other_team["key"], max_retries=0)
    their_file = theirs.files.create(file=("secret.txt", b"ops only"), purpose="assistants")

    batch = plane.ca.issue("batch")
    keyed = (("authorization", f"Bearer {created['key']}"),)
    with secure(plane.addresses["inference"], batch) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        listed = stub.ListModels(inference_pb2.ListModelsRequest(), metadata=keyed, timeout=5)
        assert [m.id for m in listed.models] == ["fake"]
        assert (
            code_of(lambda: stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5))
            == grpc.StatusCode.UNAUTHENTICATED
        )  # no key: refused

        def chat(model: str) -> list[inference_pb2.StreamChatCompletionResponse]:
            request = inference_pb2.StreamChatCompletionRequest(
                model=model,
                messages=[inference_pb2.ChatMessage(role="user", content="hi")],
                sampling=inference_pb2.SamplingParams(max_tokens=4),
                allowed_models=["other"],  # what the caller claims counts for nothing
            )
            return list(stub.StreamChatCompletion(request, metadata=keyed, timeout=10))

        assert chat("fake")[-1].HasField("summary")
        assert code_of(lambda: chat("other")) == grpc.StatusCode.PERMISSION_DENIED

    with secure(plane.addresses["files"], batch) as channel:
        files = files_pb2_grpc.FilesServiceStub(channel)
        forged = files_pb2.GetFileRequest(team="ops", file_id=their_file.id)
        assert code_of(lambda: files.GetFile(forged, metadata=keyed, timeout=5)) == (
            grpc.StatusCode.NOT_FOUND  # looked up in the key's team, "data"
        )
        mine = files.ListFiles(files_pb2.ListFilesRequest(team="ops"), metadata=keyed, timeout=5)
        assert their_file.id not in [f.id for f in mine.files]

    revoked = httpx.delete(f"{plane.base}/v1/admin/keys/{created['id']}", headers=ADMIN, timeout=10)
    assert revoked.status_code == 200
    time.sleep(1.1)  # the services' key cache holds an answer at most 1 s
    with secure(plane.addresses["inference"], batch) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        call = lambda: stub.ListModels(  # noqa: E731
            inference_pb2.ListModelsRequest(), metadata=keyed, timeout=5
        )
        assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED


def test_an_internal_caller_with_a_key_is_held_to_its_limits_and_gets_ledger_rows(
    plane: Plane,
) -> None:
    """Through inference directly, a key counts as it would through the edge:
    its rpm admits two requests, the third is RESOURCE_EXHAUSTED naming the
    limit, and each admitted request leaves one ledger row with exact tokens."""
    created = httpx.post(
        f"{plane.base}/v1/admin/keys",
        headers=ADMIN,
        json={"name": "svc", "team": "data", "limits": {"rpm": 2}},
        timeout=10,
    ).json()
    unlimited = httpx.post(
        f"{plane.base}/v1/admin/keys", headers=ADMIN, json={"name": "u", "team": "data"}, timeout=10
    ).json()
    caller = plane.ca.issue("reporting")

    def keyed(key: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key['key']}"),)

    chat = inference_pb2.StreamChatCompletionRequest(
        model="fake",
        messages=[inference_pb2.ChatMessage(role="user", content="hi")],
        sampling=inference_pb2.SamplingParams(max_tokens=4),
    )
    with secure(plane.addresses["inference"], caller) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        summaries = [
            list(stub.StreamChatCompletion(chat, metadata=keyed(created), timeout=10))[-1].summary
            for _ in range(2)
        ]
        try:
            list(stub.StreamChatCompletion(chat, metadata=keyed(created), timeout=10))
        except grpc.RpcError as error:
            refused = error
        else:
            raise AssertionError("a third request within the minute was admitted")
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "rpm" in (refused.details() or "")  # type: ignore[attr-defined]
        embedded = stub.CreateEmbeddings(
            inference_pb2.CreateEmbeddingsRequest(
                model="fake", inputs=[inference_pb2.EmbeddingInput(text="hello there")]
            ),
            metadata=keyed(unlimited),
            timeout=10,
        )
        whole = stub.ChatCompletion(
            inference_pb2.ChatCompletionRequest(request=chat), metadata=keyed(unlimited), timeout=10
        )

    def rows(key_id: str) -> list[dict[str, object]]:
        answer = httpx.get(
            f"{plane.base}/v1/admin/usage",
            params={"key_id": key_id, "group_by": "route"},
            headers=ADMIN,
            timeout=10,
        )
        return answer.json()["data"]  # type: ignore[no-any-return]

    route = "aqueduct.inference.v1.InferenceService/"
    expected = [
        {
            "route": route + "StreamChatCompletion",
            "requests": 2,
            "input_tokens": sum(s.usage.prompt_tokens for s in summaries),
            "output_tokens": sum(s.usage.completion_tokens for s in summaries),
            "errors": 0,
        }
    ]
    wait_for(lambda: rows(created["id"]) == expected, 10, "two ledger rows for the limited key")
    # The unary ChatCompletion (a whole answer in one message) is metered as a stream is.
    unlimited_rows = [
        {
            "route": route + "ChatCompletion",
            "requests": 1,
            "input_tokens": whole.summary.usage.prompt_tokens,
            "output_tokens": whole.summary.usage.completion_tokens,
            "errors": 0,
        },
        {
            "route": route + "CreateEmbeddings",
            "requests": 1,
            "input_tokens": embedded.usage.prompt_tokens,
            "output_tokens": 0,
            "errors": 0,
        },
    ]
    wait_for(
        lambda: sorted(rows(unlimited["id"]), key=lambda r: str(r["route"])) == unlimited_rows,
        10,
        "the whole answer's and the embedding's ledger rows",
    )
