#!/usr/bin/env bash
# `make compose-test` (not part of `make test`): the compose deployment for real, on a
# Docker engine, checked the way a user would check it.
#
#   1. A Docker engine: the running one, or else dockerd (Debian's docker.io, installed
#      with apt-get if missing) started here in the background, logging to
#      $WORK/dockerd.log, and stopped at the end.
#   2. Compose v2: the installed plugin, or else Debian trixie's docker-compose package
#      (bookworm has only compose v1), at $COMPOSE_DEB, fetched with `apt-get download`
#      through a private apt configuration (the host's sources and lists are not
#      touched) and unpacked as a CLI plugin into ~/.docker/cli-plugins; the same for
#      docker-buildx ($BUILDX_DEB: the docker CLI builds with BuildKit only through it).
#   3. Images: the official ones when a registry answers; otherwise local ones built
#      from a Debian bookworm root filesystem (debootstrap, `docker import`): the
#      Aqueduct image on it (PYTHON_IMAGE build arg) and stand-ins for postgres, redis
#      and haproxy (deploy/local-images/, selected by its compose override file).
#   4. `docker compose up --wait` (every healthcheck), then tests/compose/smoke.py
#      through the published port: models, chat, streaming, embeddings, a file upload
#      and a `file` part, a limited key's 429, the admin CLI in the auth container,
#      `docker compose restart inference` and healthy again. With
#      COMPOSE_TEST_BALANCED=1 (default) also the `balanced` profile: two edges behind
#      HAProxy, requests through the balancer reaching both.
#   5. `down -v`; the engine stopped if this script started it, and the network
#      settings it changed (nftables/iptables tables, net.ipv4.ip_forward, the docker0
#      bridge) put back as they were before.
#
# Needs root (apt-get, dockerd), the project's venv (`make setup`: the openai SDK for the
# smoke suite) and Debian's mirror. Images and build cache stay in /var/lib/docker.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=${AQUEDUCT_COMPOSE_WORK:-/var/cache/aqueduct-compose}
PROJECT=${COMPOSE_TEST_PROJECT:-aqueduct-compose-test}
BALANCED=${COMPOSE_TEST_BALANCED:-1}
COMPOSE_DEB=${COMPOSE_DEB:-docker-compose=2.26.1-4}
BUILDX_DEB=${BUILDX_DEB:-docker-buildx=0.13.1+ds1-3}
BASE_IMAGE=aqueduct-local/python:3.11-bookworm
MIRROR=http://deb.debian.org/debian
PY=$ROOT/.venv/bin/python

mkdir -p "$WORK/logs"
say() { printf '[compose-test %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, dockerd)"
[ -x "$PY" ] || die "no $PY: run make setup"

STARTED_DOCKERD=""
STACK_UP=""
COMPOSE=()

cleanup() {
  local status=$?
  set +e
  if [ -n "$STACK_UP" ]; then
    say "down -v"
    "${COMPOSE[@]}" --profile balanced down -v --remove-orphans >"$WORK/logs/down.log" 2>&1 ||
      { say "down -v failed:"; tail -20 "$WORK/logs/down.log"; }
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    stop_dockerd
    restore_network
  fi
  if [ "$status" = 0 ]; then say "PASSED"; else say "FAILED (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. engine ---------------------------------------------------------------------

NET_BEFORE=$WORK/net-before
snapshot_network() {
  rm -rf "$NET_BEFORE" && mkdir -p "$NET_BEFORE/tables"
  sysctl -n net.ipv4.ip_forward >"$NET_BEFORE/ip_forward"
  sysctl -n net.ipv6.conf.all.forwarding >"$NET_BEFORE/ipv6_forwarding" 2>/dev/null || true
  if ip link show docker0 >/dev/null 2>&1; then touch "$NET_BEFORE/docker0"; fi
  if command -v nft >/dev/null && iptables -V 2>/dev/null | grep -q nf_tables; then
    # iptables-nft: every table dockerd may touch is an nftables table; keep each one.
    nft list tables | while read -r _ family name; do
      nft list table "$family" "$name" >"$NET_BEFORE/tables/$family $name"
    done
  else
    iptables-save >"$NET_BEFORE/iptables"
    ip6tables-save >"$NET_BEFORE/ip6tables" 2>/dev/null || true
  fi
}

restore_network() {
  say "restoring the host network settings dockerd changed"
  local changed=()
  if [ -d "$NET_BEFORE/tables" ] && [ ! -f "$NET_BEFORE/iptables" ]; then
    local family name
    while read -r _ family name; do
      local saved="$NET_BEFORE/tables/$family $name"
      if [ ! -f "$saved" ]; then
        nft delete table "$family" "$name" && changed+=("deleted nft table $family $name")
      elif ! diff -q <(nft list table "$family" "$name") "$saved" >/dev/null; then
        nft delete table "$family" "$name" && nft -f "$saved" &&
          changed+=("restored nft table $family $name")
      fi
    done < <(nft list tables)
  else
    local current
    for t in filter nat; do
      iptables -t "$t" -F && iptables -t "$t" -X
    done
    for c in INPUT FORWARD OUTPUT; do iptables -P "$c" ACCEPT; done
    iptables-restore <"$NET_BEFORE/iptables" && changed+=("iptables restored from iptables-save")
  fi
  if ip link show docker0 >/dev/null 2>&1 && [ ! -f "$NET_BEFORE/docker0" ]; then
    ip link delete docker0 && changed+=("deleted bridge docker0")
  fi
  local forward
  forward=$(cat "$NET_BEFORE/ip_forward")
  if [ "$(sysctl -n net.ipv4.ip_forward)" != "$forward" ]; then
    sysctl -q -w net.ipv4.ip_forward="$forward" && changed+=("net.ipv4.ip_forward=$forward")
  fi
  if [ -s "$NET_BEFORE/ipv6_forwarding" ]; then
    forward=$(cat "$NET_BEFORE/ipv6_forwarding")
    if [ "$(sysctl -n net.ipv6.conf.all.forwarding)" != "$forward" ]; then
      sysctl -q -w net.ipv6.conf.all.forwarding="$forward" &&
        changed+=("net.ipv6.conf.all.forwarding=$forward")
    fi
  fi
  say "put back: ${changed[*]:-nothing needed}"
}

start_dockerd() {
  if ! command -v dockerd >/dev/null; then
    say "installing Debian's docker.io (dockerd, containerd, runc)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
      docker.io >"$WORK/logs/apt-docker.log" 2>&1 || die "apt-get install docker.io"
  fi
  snapshot_network
  say "starting dockerd (log: $WORK/dockerd.log)"
  mkdir -p "$WORK/exec"
  dockerd --data-root /var/lib/docker --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" -H unix:///var/run/docker.sock >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; die "dockerd exited"; }
    sleep 1
  done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s"
  say "dockerd $(docker version -f '{{.Server.Version}}') up," \
    "storage $(docker info -f '{{.Driver}}'), cgroups v$(docker info -f '{{.CgroupVersion}}')"
}

stop_dockerd() {
  say "stopping dockerd (pid $STARTED_DOCKERD), which this script started"
  kill -TERM "$STARTED_DOCKERD" 2>/dev/null
  for _ in $(seq 60); do
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$STARTED_DOCKERD" 2>/dev/null; then
    say "dockerd still running after 60 s; killing it"
    kill -KILL "$STARTED_DOCKERD"
  fi
  wait "$STARTED_DOCKERD" 2>/dev/null || true
}

if docker info >/dev/null 2>&1; then
  say "using the running Docker engine $(docker version -f '{{.Server.Version}}')"
else
  start_dockerd
fi

# --- 2. compose v2 and buildx ----------------------------------------------------------

install_plugins() {
  local apt_dir=$WORK/apt-trixie
  rm -rf "$apt_dir" && mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/x"
  cat >"$apt_dir/trixie.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root)
  say "fetching $COMPOSE_DEB and $BUILDX_DEB from Debian trixie (private apt lists)"
  apt-get "${opts[@]}" update >"$WORK/logs/apt-trixie.log" 2>&1 || die "apt-get update (trixie)"
  (cd "$apt_dir" && apt-get "${opts[@]}" download "$COMPOSE_DEB" "$BUILDX_DEB") \
    >>"$WORK/logs/apt-trixie.log" 2>&1 || die "apt-get download $COMPOSE_DEB $BUILDX_DEB"
  for deb in "$apt_dir"/*.deb; do dpkg-deb -x "$deb" "$apt_dir/x"; done
  mkdir -p ~/.docker/cli-plugins
  install -m 0755 "$apt_dir/x/usr/libexec/docker/cli-plugins/docker-compose" \
    "$apt_dir/x/usr/libexec/docker/cli-plugins/docker-buildx" ~/.docker/cli-plugins/
  rm -rf "$apt_dir"
}

if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
  install_plugins
fi
docker compose version | grep -q 'version v\?2\.' || die "$(docker compose version) is not v2"
say "$(docker compose version), buildx $(docker buildx version | cut -d' ' -f2)"

# --- 3. images -------------------------------------------------------------------------

build_base_image() {
  local rootfs=$WORK/rootfs
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
      debootstrap >"$WORK/logs/apt-debootstrap.log" 2>&1 || die "apt-get install debootstrap"
  fi
  say "debootstrap: Debian bookworm with python3.11 into $rootfs (a few minutes)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase \
    --include=python3.11,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$WORK/logs/debootstrap.log" 2>&1 || die "debootstrap"
  # As Debian's slim images: no documentation, manuals or translations, no apt caches,
  # now or from later installs.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} +
  # The CAs this machine added (a TLS-intercepting proxy's, say), so pip in the build
  # verifies PyPI as the host does; pip reads PIP_CERT, not the system store.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >"$WORK/logs/update-ca.log" 2>&1
  fi
  tar -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
      --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

OFFICIAL=(python:3.11-slim-bookworm postgres:16 redis:7)
[ "$BALANCED" = 1 ] && OFFICIAL+=(haproxy:3.0)
LOCAL=""
for image in "${OFFICIAL[@]}"; do
  if ! docker image inspect "$image" >/dev/null 2>&1 &&
    ! timeout 300 docker pull -q "$image" >"$WORK/logs/pull.log" 2>&1; then
    say "cannot pull $image ($(tail -1 "$WORK/logs/pull.log")): local images instead"
    LOCAL=1
    break
  fi
done

COMPOSE=(docker compose -p "$PROJECT" -f docker-compose.yml)
if [ -n "$LOCAL" ]; then
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || build_base_image
  say "base image $BASE_IMAGE: $(docker run --rm "$BASE_IMAGE" python --version)"
  for image in postgres:15 redis:7 haproxy:2.6; do
    docker build -q -t "aqueduct-local/$image" --build-arg BASE_IMAGE="$BASE_IMAGE" \
      "deploy/local-images/${image%%:*}" >"$WORK/logs/build-${image%%:*}.log" 2>&1 ||
      { tail -20 "$WORK/logs/build-${image%%:*}.log"; die "building aqueduct-local/$image"; }
  done
  COMPOSE+=(-f deploy/local-images/docker-compose.local.yml)
fi
say "compose: ${COMPOSE[*]}"

export AQUEDUCT_BOOTSTRAP_KEY
AQUEDUCT_BOOTSTRAP_KEY="sk-aq-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')"
export POSTGRES_PASSWORD
POSTGRES_PASSWORD=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export EDGE_PORT BALANCER_PORT
EDGE_PORT=$(free_port)
BALANCER_PORT=$(free_port)

say "building the Aqueduct image (log: $WORK/logs/build.log)"
started=$SECONDS
"${COMPOSE[@]}" build --progress plain >"$WORK/logs/build.log" 2>&1 ||
  { tail -40 "$WORK/logs/build.log"; die "docker compose build"; }
say "built in $((SECONDS - started)) s"
docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}' |
  grep -E '^(REPOSITORY|aqueduct)' | sed 's/^/    /'

# --- 4. up, smoke --------------------------------------------------------------------

show_state() {
  "${COMPOSE[@]}" --profile balanced ps -a
  "${COMPOSE[@]}" --profile balanced logs --tail 30
}

STACK_UP=1
say "up --wait (edge on 127.0.0.1:$EDGE_PORT)"
started=$SECONDS
"${COMPOSE[@]}" up -d --wait --wait-timeout 600 >"$WORK/logs/up.log" 2>&1 ||
  { tail -20 "$WORK/logs/up.log"; show_state; die "the stack did not get healthy"; }
say "every service healthy after $((SECONDS - started)) s"
"${COMPOSE[@]}" ps --format '{{.Service}}: {{.State}}, {{.Status}}' | sed 's/^/    /'

"$PY" -m tests.compose.smoke --base-url "http://127.0.0.1:$EDGE_PORT" --compose "${COMPOSE[*]}" ||
  { show_state; die "smoke suite"; }

say "scaling: inference and auth to two replicas each, the edge restarted"
"$PY" -m tests.compose.smoke --base-url "http://127.0.0.1:$EDGE_PORT" --compose "${COMPOSE[*]}" \
  --only scaled || { show_state; die "smoke suite with two inference and auth replicas"; }

if [ "$BALANCED" = 1 ]; then
  say "profile balanced: two edges behind HAProxy on 127.0.0.1:$BALANCER_PORT"
  "${COMPOSE[@]}" --profile balanced up -d --wait --wait-timeout 300 >"$WORK/logs/up-balanced.log" 2>&1 ||
    { tail -20 "$WORK/logs/up-balanced.log"; show_state; die "the balanced profile did not get healthy"; }
  "${COMPOSE[@]}" --profile balanced ps --format '{{.Service}}: {{.State}}, {{.Status}}' |
    sed 's/^/    /'
  "$PY" -m tests.compose.smoke --base-url "http://127.0.0.1:$BALANCER_PORT" \
    --compose "${COMPOSE[*]} --profile balanced" --only models,chat,stream,both_edges ||
    { show_state; die "smoke suite through the balancer"; }
fi
