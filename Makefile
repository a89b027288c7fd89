# Aqueduct: `make run` starts everything on embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROTOS := $(shell find proto -name '*.proto')
GEN    := gen/.generated
# buf (the proto linter) from the npm registry, pinned, kept in .tools/ (git-ignored).
BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf
BUF_OK := .tools/.buf-$(BUF_VERSION)

.PHONY: setup proto run test unit integration lint lint-proto bench compose-test clean

setup: $(GEN)

# llama-cpp-python compiles from source (~4 min). Not tuned to the building CPU
# (GGML_NATIVE would use every instruction it advertises, AMX included, which a
# virtual machine may advertise and still refuse: SIGILL), but for x86-64-v3
# (AVX2, FMA, F16C), which runs on any machine of the last decade. The wheel is
# kept per version and flags outside the clone, so fresh clones on this machine
# install it at once; pip's own cache ignores the flags (it would hand back a
# wheel built with others), so this one build skips it.
LLAMA_SPEC   := $(shell grep -E '^llama-cpp-python==' requirements.txt)
LLAMA_CMAKE  := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_BUILD  := $(shell echo '$(LLAMA_SPEC) $(LLAMA_CMAKE)' | sha256sum | cut -c1-16)
LLAMA_WHEELS := $(HOME)/.cache/aqueduct/wheels/$(LLAMA_BUILD)
# Named after the llama build too: new flags reinstall it in an existing venv.
DEPS         := $(VENV)/.deps-installed-$(LLAMA_BUILD)

# Pinned dependencies: requirements-dev.txt is the runtime set (requirements.txt)
# plus what builds, tests and lints.
$(DEPS): requirements.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE)" \
		$(PY) -m pip wheel --quiet --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "$(LLAMA_SPEC)"
	$(PY) -m pip install --quiet --find-links $(LLAMA_WHEELS) -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# The gRPC code is generated into gen/ (not committed), then the project is
# installed editable: code changes take effect without reinstalling, and gen/
# is one of its package roots (pyproject.toml), so it installs after gen/ is
# there. A new proto package reinstalls it with the next generation.
# (setuptools warns that folders named like the packages may shadow them: here
# they are those very folders.)
$(GEN): $(DEPS) $(PROTOS) pyproject.toml
	rm -rf gen.tmp && mkdir -p gen.tmp
	$(PY) -m grpc_tools.protoc -I proto --python_out=gen.tmp --grpc_python_out=gen.tmp \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=gen.tmp \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=gen.tmp \
		$(PROTOS)
	rm -rf gen && mv gen.tmp gen
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --editable .
	touch $@

proto: $(GEN)

$(BUF_OK):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)
	touch $@

# The proto contract: buf.yaml's rules, and no breaking change against the
# previous commit on main (scripts/proto_breaking.sh says which commit that is,
# and when there is none to compare with).
lint-proto: $(BUF_OK)
	$(BUF) lint
	BUF=$(BUF) scripts/proto_breaking.sh

run: setup
	$(PY) -m scripts.run

test: setup lint
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

lint: setup lint-proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core services edge scripts

# The compose deployment on a real Docker engine (not part of `make test`; root, a few
# minutes, the first image build much longer): starts dockerd and fetches a compose v2
# plugin if missing, builds local images when no registry answers, then `up --wait`,
# the smoke suite through the published port (tests/compose/smoke.py), `down -v`.
# See scripts/compose_test.sh and README, "Deploying with Docker Compose".
compose-test: setup
	bash scripts/compose_test.sh

# Load test beside LiteLLM on ../shared/bench, admin key and limited key (about 7 minutes a round).
bench: setup
	bash scripts/bench.sh $(ARGS)

clean:
	rm -rf gen .pytest_cache .tools
