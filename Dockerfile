# syntax=docker/dockerfile:1
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

# Same flags as the Makefile: llama.cpp for x86-64-v3 (AVX2), not tuned to the
# building CPU, so the image runs on other machines (and on VMs that advertise
# instructions they refuse). For a faster image on known hardware:
#   docker build --build-arg CMAKE_ARGS="-DLLAVA_BUILD=OFF" .
ARG CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
# Only the runtime set (requirements.txt): no test, lint or code generation tools.
COPY requirements.txt requirements-nodeps.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv .venv \
 && .venv/bin/pip install --upgrade pip \
 && CMAKE_ARGS="${CMAKE_ARGS}" .venv/bin/pip install -r requirements.txt \
 && .venv/bin/pip install --no-deps -r requirements-nodeps.txt

# protoc into gen/ (as the Makefile does), with grpcio-tools at its pin from
# requirements-dev.txt, installed outside the virtualenv: this stage only.
COPY requirements-dev.txt ./
COPY proto ./proto
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "$(grep '^grpcio-tools==' requirements-dev.txt)" \
 && mkdir gen \
 && python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
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
