# syntax=docker/dockerfile:1
# A CPU worker for the models of the main environment (SevenNet and CHGNet):
# `mlipserve worker --model NAME --device cpu`, fed by Redis.
#
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t mlipserve-worker-cpu:0.1.0 .   (from the repository root)
#
# The install commands are the Makefile's (`make install`): CPU torch first, pinned by deploy/constraints-cpu.txt, so
# that no model package pulls a CUDA build; then the package with its model extras under the same constraints. Two
# differences: the torch step names PyTorch's CPU index (the Makefile relies on the machine's pip configuration),
# and the package is installed as a wheel, not editable. tests/test_deploy.py checks that the two stay the same.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN python -m venv /opt/venv
WORKDIR /src
COPY deploy/constraints-cpu.txt ./deploy/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        -c deploy/constraints-cpu.txt torch
COPY pyproject.toml README.md LICENSE ./
COPY mlipserve ./mlipserve
COPY models ./models
COPY server ./server
COPY clients ./clients
RUN /opt/venv/bin/python -m pip install --no-cache-dir -c deploy/constraints-cpu.txt ".[sevenn,chgnet]"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/mlipserve mlipserve \
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
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]
ENTRYPOINT ["mlipserve"]
# The Redis URL comes from $MLIPSERVE_REDIS_URL. SIGTERM drains: the batch in hand is finished, relaxations get
# --drain-timeout seconds, the rest goes back to the queue; give the container longer than that to stop.
CMD ["worker", "--model", "7net-0", "--device", "cpu", "--metrics-port", "9100", "--drain-timeout", "60"]
