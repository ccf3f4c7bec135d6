FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# A plain install: the package carries the migrations as package data, so the sources go
# away and the services run from /app, where no source tree shadows the installed copy.
COPY service/ service/
COPY workers/ workers/
COPY gen/ gen/
COPY migrations/ migrations/
RUN pip install --no-cache-dir . \
    && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
USER app

EXPOSE 50051

# The API by default; compose runs `python -m service migrate` and `python -m workers` from this image too.
CMD ["python", "-m", "service"]
