# syntax=docker/dockerfile:1
# One image for every Aqueduct process; the command picks which one runs:
#   python -m services.auth | python -m services.files | python -m services.inference | python -m edge
# docker-compose.yml runs all four from it (see README, "Deploying with Docker Compose").

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: dependencies (llama-cpp-python compiles from source) and generated gRPC code ---
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# Same flags as the Makefile. llama.cpp tunes itself to the building CPU (GGML_NATIVE);
# for an image that runs on other machines add -DGGML_NATIVE=OFF:
#   docker build --build-arg CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" .
ARG CMAKE_ARGS="-DLLAVA_BUILD=OFF"
COPY requirements.txt requirements-nodeps.txt ./
# The virtualenv sits where the Makefile expects it, so `make proto` below is the
# Makefile's own recipe; the marker tells make the dependencies are installed.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv .venv \
 && .venv/bin/pip install --upgrade pip \
 && CMAKE_ARGS="${CMAKE_ARGS}" .venv/bin/pip install -r requirements.txt \
 && .venv/bin/pip install --no-deps -r requirements-nodeps.txt \
 && touch .venv/.deps-installed

# protoc into gen/, plus the .pth file that puts /app/gen and /app on the venv's path.
COPY Makefile ./
COPY proto ./proto
RUN make proto

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
COPY --from=build /app/gen ./gen
COPY core ./core
COPY services ./services
COPY edge ./edge
COPY scripts ./scripts

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
