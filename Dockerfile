# syntax=docker/dockerfile:1
# bankrace images. `docker build .` builds the last stage, `service`: `bankrace serve` (gunicorn)
# as a non-root user, SQLite on the /data volume unless BANK_DATABASE_URL points elsewhere, with
# only the service's run-time dependencies (pyproject's `dependencies`: no Locust, no gevent, no
# dev tool). The `loadtest` stage adds the `load` extra (Locust) for docker-compose's loadtest
# profile. Checked without a Docker engine by tests/deploy/test_dockerfile.py and test_compose.py
# (every path, command and variable named here must exist).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so that a code change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The whole project (.dockerignore keeps out .git, .venv, tests and caches). An editable install,
# because the CLI finds Alembic's top-level migrations/ next to the service package: /app must
# stay a copy of the repository. Root owns the code; the service user can only write /data.
COPY . .
RUN pip install --no-deps -e . \
 && groupadd --system --gid 10001 bank \
 && useradd --system --uid 10001 --gid bank --home-dir /app --shell /usr/sbin/nologin bank \
 && mkdir -p /data \
 && chown bank:bank /data

# Locust (and its gevent) for the loadtest profile's master and workers: the `load` extra, on top
# of the service's files, in an image of its own. Compose gives each its command.
FROM base AS loadtest
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['optional-dependencies']['load']))" > /tmp/requirements-load.txt \
 && pip install -r /tmp/requirements-load.txt \
 && rm /tmp/requirements-load.txt
USER bank

# The service (the default target).
FROM base AS service
ENV BANK_BIND=0.0.0.0:8000 \
    BANK_DATABASE_URL=sqlite:////data/bank.db
VOLUME ["/data"]
EXPOSE 8000
USER bank

# The slim image has no curl: the probe is a stdlib-only script that GETs /healthz on BANK_BIND.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]

CMD ["bankrace", "serve"]
