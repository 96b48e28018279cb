# syntax=docker/dockerfile:1
# A GPU worker for the models of the main environment (SevenNet and CHGNet): `mlipserve worker --device cuda`.
#
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t mlipserve-worker-cuda:0.1.0 .   (from the repository root)
#   docker build ... --build-arg TORCH_CUDA=cu126 --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
#
# The install commands are the Makefile's (`make install`) with another torch build: the version still comes from
# deploy/constraints-cpu.txt (torch==2.13.0 matches 2.13.0+cu128), the build from PyTorch's CUDA index. Then the
# package with the same extras and constraints as worker-cpu.Dockerfile, as a wheel instead of editable.
# tests/test_deploy.py checks that the commands stay the same.
#
# torch's CUDA wheels bring their own CUDA libraries; the nvidia/cuda base adds what the NVIDIA container toolkit
# reads (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES) on the same Ubuntu release as the builder, so the venv's
# /usr/bin/python3.12 exists in both stages. The host's driver must support the CUDA version of TORCH_CUDA.

ARG BUILD_IMAGE=ubuntu:24.04
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS builder
ARG TORCH_CUDA=cu128
# 1 adds cuEquivariance kernels, the packages `CUEQ=1 deploy/make-env.sh` adds. mlipserve uses them for MACE models
# only (worker-mace.Dockerfile), so they are off here unless asked for.
ARG CUEQ=0
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY deploy/constraints-cpu.txt ./deploy/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
        -c deploy/constraints-cpu.txt torch
COPY pyproject.toml README.md LICENSE ./
COPY mlipserve ./mlipserve
COPY models ./models
COPY server ./server
COPY clients ./clients
RUN /opt/venv/bin/python -m pip install --no-cache-dir -c deploy/constraints-cpu.txt ".[sevenn,chgnet]" \
    && if [ "$CUEQ" = 1 ]; then \
        /opt/venv/bin/python -m pip install --no-cache-dir -c deploy/constraints-cpu.txt \
            cuequivariance-torch cuequivariance-ops-torch-cu12; \
    fi

FROM ${CUDA_IMAGE}
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
VOLUME /models
# The worker's own HTTP port (--metrics-port): /metrics, /healthz, /readyz. Workers take no requests: they read Redis.
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]
ENTRYPOINT ["mlipserve"]
# --device cuda, not auto: a worker that finds no GPU should fail at start, not serve from the CPU unnoticed.
CMD ["worker", "--model", "7net-0", "--device", "cuda", "--metrics-port", "9100", "--drain-timeout", "60"]
