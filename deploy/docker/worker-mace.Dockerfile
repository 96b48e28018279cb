# syntax=docker/dockerfile:1
# A worker for MACE models, in an image of its own: mace-torch pins e3nn 0.4.4, which sevenn cannot share.
#
#   docker build -f deploy/docker/worker-mace.Dockerfile -t mlipserve-worker-mace:0.1.0-cuda .
#   docker build -f deploy/docker/worker-mace.Dockerfile -t mlipserve-worker-mace:0.1.0-cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg RUNTIME_IMAGE=ubuntu:24.04 \
#       --build-arg CUEQ=0
#
# The install commands are deploy/make-env.sh's for `mace` (`make env-mace`): torch, then the package with the
# `mace` extra, each under deploy/constraints-cpu.txt (torch's version) and deploy/mace/constraints.txt
# (mace-torch, e3nn), then the cuEquivariance kernels when CUEQ=1. The script itself is not run because it installs
# editable into a venv of its own choosing; the image installs a wheel into /opt/venv. tests/test_deploy.py checks
# that the commands stay the same. The CPU build runs on any machine; the default, CUDA, needs an NVIDIA GPU.

ARG BUILD_IMAGE=ubuntu:24.04
ARG RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# cuEquivariance kernels (CUDA 12): the MACE backend converts the model to them on a GPU with --cueq.
ARG CUEQ=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY deploy/constraints-cpu.txt ./deploy/
COPY deploy/mace/constraints.txt ./deploy/mace/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        -c deploy/constraints-cpu.txt -c deploy/mace/constraints.txt torch
COPY pyproject.toml README.md LICENSE ./
COPY mlipserve ./mlipserve
COPY models ./models
COPY server ./server
COPY clients ./clients
RUN /opt/venv/bin/python -m pip install --no-cache-dir -c deploy/constraints-cpu.txt -c deploy/mace/constraints.txt \
        ".[mace]" \
    && if [ "$CUEQ" = 1 ]; then \
        /opt/venv/bin/python -m pip install --no-cache-dir -c deploy/constraints-cpu.txt -c deploy/mace/constraints.txt \
            cuequivariance-torch cuequivariance-ops-torch-cu12; \
    fi \
    && /opt/venv/bin/python -c "import mlipserve.models.backends.mace"

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/mlipserve mlipserve \
    && mkdir /models && chown 10001:10001 /models
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLIPSERVE_MODEL_DIR=/models \
    MLIPSERVE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/mlipserve
# MACE checkpoints are not shipped: put the .model file and its .sha256 here (see deploy/README.md).
VOLUME /models
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]
ENTRYPOINT ["mlipserve"]
# --device auto: the same image tag runs on a GPU when it has one; pass --device cuda to insist on it.
CMD ["worker", "--model", "mace-mp-0-medium", "--device", "auto", "--metrics-port", "9100", "--drain-timeout", "60"]
