# syntax=docker/dockerfile:1
# The HTTP API: `mlipserve serve --redis URL --model NAME ...`. It forwards requests to Redis workers and loads no
# model, so it needs the core package only: no torch, no model package (a small image that starts in a second).
#
#   docker build -f deploy/docker/api.Dockerfile -t mlipserve-api:0.1.0 .     (from the repository root)
#
# The install command is `pip install .`: the core package with no extras. The Makefile installs the same package
# (with extras, editable); tests/test_deploy.py checks that this image installs no torch and no extra.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the package build reads; .dockerignore keeps .venv, tests and the rest out of the context.
COPY pyproject.toml README.md LICENSE ./
COPY mlipserve ./mlipserve
COPY models ./models
COPY server ./server
COPY clients ./clients
RUN /opt/venv/bin/python -m pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
# A fixed numeric id, so Kubernetes' runAsNonRoot can check it; /models is the model directory (user cards and
# checkpoint files), a volume so the image stays free of weights.
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
EXPOSE 8000
# /healthz answers 200 while the process serves; /readyz would mark the API down whenever a model has no worker,
# which with workers scaled to zero is the normal idle state. The image has no curl: python's urllib raises (exit 1)
# on an error status or no answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["mlipserve"]
# The Redis URL comes from $MLIPSERVE_REDIS_URL; add `--model NAME` for each model the API routes. Mount a keys file
# (`mlipserve keys add NAME --file FILE`) at /etc/mlipserve/api-keys.yaml, or replace --api-keys by --insecure on a
# network you trust: mlipserve refuses to serve an open API beyond loopback.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--api-keys", "/etc/mlipserve/api-keys.yaml"]
