FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable install: the source tree stays in /app, where the migration runner
# looks for migrations/ (service/adapters/migrations.py).
COPY service/ service/
COPY workers/ workers/
COPY gen/ gen/
COPY migrations/ migrations/
COPY protos/ protos/
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app

USER app

EXPOSE 50051

# The API by default; compose runs `python -m service migrate` and `python -m workers` from this image too.
CMD ["python", "-m", "service"]
