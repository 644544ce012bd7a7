# CPU image: docker build -t softmax-xent-service:0.1.0 .
# Multi-stage: the build stage makes a venv from the locked requirements; the runtime
# stage copies only that venv and runs as a non-root numeric user.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements/cpu.lock requirements/cpu.lock
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements/cpu.lock
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE}
# No SCE_PORT: the port is 8000 unless the platform sets PORT (Knative, KServe serverless).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SCE_HOST=0.0.0.0 \
    SCE_PROVIDERS=cpu
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SCE_PORT') or os.environ.get('PORT') or '8000'; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "service"]
