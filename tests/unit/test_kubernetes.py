"""deploy/kubernetes, checked without a cluster.

Every overlay is rendered with `kubectl kustomize` and each object validated offline
against the Kubernetes schemas (kubernetes-validate bundles them). What can be
checked against the code is: each container gets only variables its own process
reads, listens where its probes and Services point, and the edge dials the
Services of the gRPC services on the ports they listen on.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.code_env import ROOT, env_names_read, imported_files

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.32"  # schemas checked against; kubectl's client is 1.32
ENTRY_MODULES = {
    "auth": "services.auth",
    "files": "services.files",
    "inference": "services.inference",
    "edge": "edge",
}
GRPC_SERVICES = ("auth", "files", "inference")
APP = "app.kubernetes.io/name"
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

_rendered: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        assert KUBECTL is not None
        done = subprocess.run(
            [KUBECTL, "kustomize", str(KUBERNETES / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        _rendered[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return _rendered[overlay]


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def container(overlay: str, name: str) -> dict[str, Any]:
    [only] = objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
    return only


def plain_env(item: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in item.get("env", []) if "value" in e}


def secret_env(item: dict[str, Any]) -> dict[str, tuple[str, str]]:
    found = {}
    for e in item.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            found[e["name"]] = (ref["name"], ref["key"])
    return found


def port_number(item: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in item["ports"] if p["name"] == port]
    return int(number)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("AQUEDUCT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def apply_env(monkeypatch: pytest.MonkeyPatch, item: dict[str, Any]) -> None:
    for key, value in plain_env(item).items():
        monkeypatch.setenv(key, value)
    for key in secret_env(item):  # a well-formed stand-in; the Secret holds the real one
        stand_in = {"AQUEDUCT_DATABASE_URL": "postgresql+psycopg://u:p@postgres:5432/aqueduct"}
        monkeypatch.setenv(key, stand_in.get(key, "redis://redis:6379/0"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    rendered = render(overlay)
    assert rendered
    for item in rendered:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_overlays_are_the_demo_and_production() -> None:
    assert OVERLAYS == ["demo", "production"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_four_processes_run_their_module_from_one_image(overlay: str) -> None:
    images = set()
    for name, module in ENTRY_MODULES.items():
        item = container(overlay, name)
        assert item["command"] == ["python", "-m", module]
        images.add(item["image"])
    assert len(images) == 1, images


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", sorted(ENTRY_MODULES))
def test_each_container_gets_only_variables_its_own_process_reads(overlay: str, name: str) -> None:
    read = env_names_read(imported_files(ENTRY_MODULES[name]))
    given = {e["name"] for e in container(overlay, name).get("env", [])}
    given = {key for key in given if key.startswith("AQUEDUCT_")}
    assert given - read == set(), f"{name} is given variables its code never reads"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_listen_where_probes_and_service_point(
    overlay: str, name: str, clean_env: pytest.MonkeyPatch
) -> None:
    item = container(overlay, name)
    apply_env(clean_env, item)
    settings = importlib.import_module(f"services.{name}.config").Settings.from_env()
    host, _, port = settings.address.rpartition(":")
    assert host == "0.0.0.0", "127.0.0.1 is unreachable from the edge's pods"
    listen = int(port)
    assert port_number(item, "grpc") == listen
    # Ready only when the service says SERVING; alive while its port answers.
    assert item["readinessProbe"]["grpc"]["port"] == listen
    assert port_number(item, item["livenessProbe"]["tcpSocket"]["port"]) == listen
    service = objects(overlay, "Service")[name]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["clusterIP"] == "None", "headless: the edge balances over pods"
    assert service["spec"]["selector"] == {APP: name}
    [sport] = service["spec"]["ports"]
    assert port_number(item, sport["targetPort"]) == listen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_edge_dials_each_service_where_it_listens(
    overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    from core.config import service_addresses
    from edge.grpc_clients import channel_target

    apply_env(clean_env, container(overlay, "edge"))
    services = objects(overlay, "Service")
    for name in GRPC_SERVICES:
        [address] = service_addresses(name)
        host, _, port = address.rpartition(":")
        assert host == name and host in services, f"edge dials {address}"
        [sport] = services[name]["spec"]["ports"]
        assert int(port) == sport["port"]
        assert channel_target([address]) == f"dns:///{address}"  # every replica's address


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_edge_listens_where_its_probes_and_service_point(
    overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    from edge.config import Settings

    item = container(overlay, "edge")
    apply_env(clean_env, item)
    settings = Settings.from_env()
    assert settings.host == "0.0.0.0"
    assert port_number(item, "http") == settings.port
    assert settings.metrics_port and port_number(item, "metrics") == settings.metrics_port
    app_source = (ROOT / "edge" / "app.py").read_text()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = item[probe]["httpGet"]
        assert http["path"] == path and f'Route("{path}"' in app_source
        assert port_number(item, http["port"]) == settings.port
    [sport] = objects(overlay, "Service")["edge"]["spec"]["ports"]
    assert port_number(item, sport["targetPort"]) == settings.port


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_services_serve_metrics_where_their_port_is_declared(
    overlay: str, name: str, clean_env: pytest.MonkeyPatch
) -> None:
    from services.common.metrics import metrics_address

    item = container(overlay, name)
    apply_env(clean_env, item)
    address = metrics_address(name)
    assert address is not None and address[0] == "0.0.0.0"
    assert port_number(item, "metrics") == address[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_port_leaves_the_cluster_and_secrets_stay_in_secrets(overlay: str) -> None:
    for service in objects(overlay, "Service").values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    for name in ENTRY_MODULES:
        item = container(overlay, name)
        assert not any("hostPort" in p for p in item["ports"])
        for key in ("AQUEDUCT_BOOTSTRAP_KEY", "AQUEDUCT_DATABASE_URL", "AQUEDUCT_REDIS_URL"):
            assert key not in plain_env(item), f"{name}: {key} belongs in a Secret"
    assert secret_env(container(overlay, "auth")).keys() >= {
        "AQUEDUCT_BOOTSTRAP_KEY",
        "AQUEDUCT_DATABASE_URL",
        "AQUEDUCT_REDIS_URL",
    }
    assert "AQUEDUCT_DATABASE_URL" in secret_env(container(overlay, "files"))
    secrets = objects(overlay, "Secret")
    refs = {ref for n in ENTRY_MODULES for ref in secret_env(container(overlay, n)).values()}
    for secret_name, key in refs:
        if secrets:  # demo generates it; production expects the operator's
            assert key in secrets[secret_name]["data"], f"{secret_name} has no {key}"


def user_id_in_dockerfile() -> int:
    match = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match
    return int(match.group(1))


def image_env() -> dict[str, str]:
    """The runtime stage's ENV defaults, which every container starts with."""
    text = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    return dict(re.findall(r"(AQUEDUCT_\w+)=(\S+)", text))


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", sorted(ENTRY_MODULES))
def test_runs_as_the_image_user_on_a_read_only_root(
    overlay: str, name: str, clean_env: pytest.MonkeyPatch
) -> None:
    pod = objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]
    item = container(overlay, name)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == user_id_in_dockerfile()
    assert item["securityContext"]["readOnlyRootFilesystem"] is True
    assert item["securityContext"]["allowPrivilegeEscalation"] is False
    assert item["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert item["resources"]["requests"].keys() >= {"cpu", "memory"}
    mounts = {Path(m["mountPath"]): m["name"] for m in item.get("volumeMounts", [])}
    assert Path("/tmp") in mounts
    if name == "auth":  # it makes its data dir private at start-up: writable
        from services.auth.config import Settings as AuthSettings

        clean_env.setenv("AQUEDUCT_DATA_DIR", image_env()["AQUEDUCT_DATA_DIR"])
        apply_env(clean_env, item)
        data = AuthSettings.from_env().data_dir
        assert data in mounts, f"auth writes {data}, which is on the read-only root"
    if name == "files":  # where the code writes file bytes is a shared volume
        clean_env.setenv("AQUEDUCT_DATA_DIR", image_env()["AQUEDUCT_DATA_DIR"])
        apply_env(clean_env, item)
        from services.files.config import Settings

        storage = Settings.from_env().storage_dir
        [holder] = [m for m in mounts if m == storage or m in storage.parents]
        volumes = {v["name"]: v for v in pod["volumes"]}
        claim = volumes[mounts[holder]]["persistentVolumeClaim"]["claimName"]
        assert claim in objects(overlay, "PersistentVolumeClaim")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_the_edge_reach_the_grpc_ports(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy").values()
    assert any(
        p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
        for p in policies
    ), "no default deny"
    for name in GRPC_SERVICES:
        grpc_port = port_number(container(overlay, name), "grpc")
        for policy in policies:
            selector = policy["spec"]["podSelector"]
            selects = selector.get("matchLabels", {}).get(APP) == name or name in [
                v for e in selector.get("matchExpressions", []) for v in e["values"]
            ]
            for rule in policy["spec"].get("ingress", []) if selects else []:
                ports = {p["port"] for p in rule.get("ports", [])}
                if not rule.get("ports") or grpc_port in ports:
                    assert rule["from"] == [{"podSelector": {"matchLabels": {APP: "edge"}}}]


def test_demo_has_its_datastores_and_redis_keeps_nothing_on_disk() -> None:
    secret = next(iter(objects("demo", "Secret").values()))
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert "@postgres:5432/" in data["database-url"]
    assert data["redis-url"].startswith("redis://redis:6379/")
    assert data["database-url"].split(":")[2].split("@")[0] == data["postgres-password"]
    redis = container("demo", "redis")
    assert redis["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
    for policy in objects("demo", "NetworkPolicy").values():
        target = policy["spec"]["podSelector"].get("matchLabels", {}).get(APP)
        allowed = {"postgres": {"auth", "files"}, "redis": {"auth"}}.get(str(target))
        if allowed:
            sources = {
                f["podSelector"]["matchLabels"][APP]
                for r in policy["spec"]["ingress"]
                for f in r["from"]
            }
            assert sources == allowed


def test_production_scales_with_budgets_and_autoscalers() -> None:
    deployments = objects("production", "Deployment")
    assert (
        not {"postgres", "redis"} & deployments.keys() | objects("production", "StatefulSet").keys()
    ), "production uses your PostgreSQL and Redis"
    for name in ENTRY_MODULES:
        assert deployments[name]["spec"]["replicas"] >= 2, name
    budgets = {
        p["spec"]["selector"]["matchLabels"][APP]
        for p in objects("production", "PodDisruptionBudget").values()
    }
    assert budgets == set(ENTRY_MODULES)
    scaled = {}
    for hpa in objects("production", "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        [metric] = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        scaled[target["name"]] = hpa["spec"]["minReplicas"]
    assert set(scaled) == {"edge", "inference"}
    [claim] = objects("production", "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "files replicas share the bytes"
