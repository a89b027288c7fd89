#!/usr/bin/env bash
# `make bench`: Aqueduct beside the LiteLLM proxy on the shared load harness
# (../shared/bench). The harness starts the mock upstreams, pins this gateway
# (all its processes) to one CPU, samples its CPU and RSS, and stops it.
# Aqueduct is measured twice in the run (scripts/bench_compare.py): `aqueduct`
# with the admin key (no limits: nothing reserved or settled) and
# `aqueduct-limited` with an ordinary key whose limits never bite (every
# request reserves and settles, as real keys do).
# Extra arguments go to compare.py, e.g. `make bench ARGS="--rounds 2 --no-litellm"`.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd ../shared/bench && pwd)}
WORK=$(mktemp -d /tmp/aqueduct-bench.XXXXXX)
PORT=${BENCH_PORT:-18080}
KEY=sk-aq-bench-$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
cat > "$WORK/models.yaml" <<YAML
models:
  - name: mock
    backend: openai
    upstreams: [{url: "http://127.0.0.1:18001/v1", api_key: bench}]
  - name: mock-slow
    backend: openai
    upstreams: [{url: "http://127.0.0.1:18002/v1", api_key: bench}]
YAML
bash "$BENCH/setup.sh"
GW_CMD="env AQUEDUCT_DATA_DIR=$WORK AQUEDUCT_MODELS_CONFIG=$WORK/models.yaml \
AQUEDUCT_BOOTSTRAP_KEY=$KEY AQUEDUCT_HTTP_PORT=$PORT AQUEDUCT_LOG_LEVEL=WARNING \
$PWD/.venv/bin/python -m scripts.run"
export BENCH_DIR=$BENCH
# Time to first token from 200 fast and 100 paced streams a target (#19 asks for
# at least 100 on the paced upstream; the harness's default is 20).
exec "${VENV_TOOLS:-/tmp/bench/venv-tools}/bin/python" scripts/bench_compare.py \
  --gw-url "http://127.0.0.1:$PORT/v1" --gw-key "$KEY" --gw-model mock --gw-slow-model mock-slow \
  --gw-name aqueduct --gw-cmd "$GW_CMD" --ttfb-n 200 --ttfb-slow-n 100 "$@"
