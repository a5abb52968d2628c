# gancompress: one image per role, built from one Dockerfile (docker-compose.yml names the targets).
#   docker build --target api -t gancompress:api .        the API: `.[api]` only, no torch, no onnxruntime
#   docker build --target worker -t gancompress:worker .  the CPU worker: torch and the engine
#   docker build --target gpu -t gancompress:gpu .        the CUDA worker (compose profile "gpu")
# Always name the target: without one, docker builds the last stage (gpu).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- pip: an empty virtualenv in /opt/venv, for both builders ------------------------------------
FROM ${PYTHON_IMAGE} AS pip
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# --- api-builder: the project with its `api` extra (FastAPI, Celery client, Redis, onnx) ----------
FROM pip AS api-builder
# Where pip finds packages: PyPI unless told otherwise. A mirror, a pip configuration file or a
# local wheel directory can be passed in as pip's own variables (files and directories as read-only
# build-time mounts: `podman build -v`); they apply to the builder stages only and nothing of them
# reaches a runtime image (deploy/deploy_test.py passes the host's pip sources this way). A build
# argument is seen only by the stage that declares it, hence the same five in both builders.
ARG PIP_CONFIG_FILE
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
# every dependency is pinned in pyproject
# hadolint ignore=DL3013
RUN pip install ".[api]"

# --- builder: CPU torch and the project with its `worker` extra (API + engine) --------------------
FROM pip AS builder
ARG PIP_CONFIG_FILE
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# CPU wheels of the pinned torch/torchvision (PyPI's default build would bring CUDA, several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
# hadolint ignore=DL3013
RUN pip install ".[worker]"

# --- base: what both runtime images share: non-root user, data directories, no compilers ---------
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GANCOMPRESS_STORAGE_URL=/data/artifacts \
    GANCOMPRESS_TMP_DIR=/data/tmp \
    GANCOMPRESS_DATA_DIR=/data/var
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /data/artifacts /data/tmp /data/var \
 && chown -R app:app /data
WORKDIR /home/app

# --- api: the HTTP service; it never loads a model, so no torch and no onnxruntime ---------------
FROM base AS api
COPY --from=api-builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

# --- worker: the CPU worker (the torch virtualenv; it also holds the API, for one-image set-ups) --
FROM base AS worker
# bubblewrap isolates uploaded TorchScript code (worker/engine/convert.py); it needs user
# namespaces, which a container gets only where its runtime allows them (see README, Security):
# otherwise the worker says so at start, in /healthz and in every report.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "celery -A worker.celery_app inspect ping -d celery@$(uname -n) --timeout 10"]
CMD ["celery", "-A", "worker.celery_app", "worker", "-c", "1", "-l", "info", "--without-gossip", "--without-mingle"]

# --- gpu: a CUDA worker (torch CUDA wheels on a CUDA runtime base) -----------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    GANCOMPRESS_STORAGE_URL=/data/artifacts GANCOMPRESS_TMP_DIR=/data/tmp \
    GANCOMPRESS_SANDBOX_MEMORY_BYTES=0
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_CUDA_INDEX_URL}" torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
# hadolint ignore=DL3013
RUN pip install ".[worker]" && rm -rf /src \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /data/artifacts /data/tmp \
 && chown -R app:app /data
USER 10001:10001
WORKDIR /home/app
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "celery -A worker.celery_app inspect ping -d celery@$(uname -n) --timeout 10"]
CMD ["celery", "-A", "worker.celery_app", "worker", "-c", "1", "-l", "info", "--without-gossip", "--without-mingle"]
