# The base image, pinned; a build without a registry passes a local one (--build-arg).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall them: the exact
# versions of requirements.lock (scripts/lock), each file checked against its hash.
# From wheels/ alone when scripts/wheels filled it on the host (no route to PyPI needed).
COPY requirements.lock ./
COPY wheels/ /wheels/
RUN if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
    && pip install --no-cache-dir --require-hashes -r requirements.lock \
    && pip install --no-cache-dir 'setuptools>=68'

# A plain install: the package carries the migrations as package data, so the sources go
# away and the services run from /app, where no source tree shadows the installed copy.
COPY service/ service/
COPY workers/ workers/
COPY gen/ gen/
COPY migrations/ migrations/
COPY pyproject.toml ./
RUN if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
    && pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf /src /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
USER app

# gRPC; REST and the console (HTTP_LISTEN); Prometheus metrics (METRICS_LISTEN).
EXPOSE 50051 8080 9100

# The API by default; compose runs `python -m service migrate` and `python -m workers` from this image too.
CMD ["python", "-m", "service"]
