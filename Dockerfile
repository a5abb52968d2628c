# gancompress: one image for the API and the CPU worker (target "runtime", the default), and a
# CUDA worker image (target "gpu", used by the compose profile "gpu").
#   docker build -t gancompress .            docker build --target gpu -t gancompress:gpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a virtualenv with CPU torch and the project --------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Where pip finds packages: PyPI unless told otherwise. A mirror, a pip configuration file or a
# local wheel directory can be passed in as pip's own variables (files and directories as read-only
# build-time mounts: `podman build -v`); they apply to this stage only and nothing of them reaches
# the runtime image (deploy/deploy_test.py passes the host's pip sources this way).
ARG PIP_CONFIG_FILE
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# CPU wheels of the pinned torch/torchvision (PyPI's default build would bring CUDA, several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
# the project itself, with its `worker` extra (API + engine; every dependency is pinned in pyproject)
# hadolint ignore=DL3013
RUN pip install ".[worker]"

# --- runtime: non-root, no compilers, only the virtualenv --------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GANCOMPRESS_STORAGE_URL=/data/artifacts \
    GANCOMPRESS_TMP_DIR=/data/tmp \
    GANCOMPRESS_DATA_DIR=/data/var
# bubblewrap isolates uploaded TorchScript code (worker/engine/convert.py); it needs user
# namespaces, which a container gets only where its runtime allows them (see README, Security):
# otherwise the worker says so at start, in /healthz and in every report.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /data/artifacts /data/tmp /data/var \
 && chown -R app:app /data
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

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
