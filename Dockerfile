# bankrace images. `docker build .` builds the last stage, `service`: `bankrace serve` (gunicorn)
# as a non-root user, SQLite on the /data volume unless BANK_DATABASE_URL points elsewhere, with
# only the service's run-time dependencies (pyproject's `dependencies`: no Locust, no gevent, no
# dev tool). The `loadtest` stage adds the `load` extra (Locust) for docker-compose's loadtest
# profile. Every package is an exact, hash-checked version from the lock files in requirements/
# (requirements/lock.sh makes them from pyproject.toml; tests/deploy/test_lock.py keeps them in
# step). Dependencies come before the code in both images, so a code change rebuilds only the
# last two steps. No BuildKit feature is used: the classic builder (DOCKER_BUILDKIT=0) builds it.
# Checked without a Docker engine by tests/deploy/test_dockerfile.py and test_compose.py (every
# path, command and variable named here must exist), and built and run by test_compose_stack.py.
FROM python:3.11-slim AS dependencies

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# --require-hashes: every package, dependencies of dependencies included, is pinned and its
# download checked against the lock's sha256. build.txt holds the build backend that the
# editable install below uses (no build isolation: nothing unpinned is fetched for it).
# The service user can write only /data; root owns the code.
COPY requirements/build.txt requirements/service.txt requirements/load.txt requirements/
RUN pip install --require-hashes -r requirements/build.txt \
 && pip install --require-hashes -r requirements/service.txt \
 && groupadd --system --gid 10001 bank \
 && useradd --system --uid 10001 --gid bank --home-dir /app --shell /usr/sbin/nologin bank \
 && mkdir -p /data \
 && chown bank:bank /data

# Locust (and its gevent) for the loadtest profile's master and workers: the `load` extra, in an
# image of its own. Compose gives each its command.
FROM dependencies AS load-dependencies
RUN pip install --require-hashes -r requirements/load.txt

# The whole project (.dockerignore keeps out .git, .venv, tests and caches). An editable install,
# because the CLI finds Alembic's top-level migrations/ next to the service package: /app must
# stay a copy of the repository. The same two steps end the service image below.
FROM load-dependencies AS loadtest
COPY . .
RUN pip install --no-deps --no-build-isolation -e .
USER bank

# The service (the default target).
FROM dependencies AS service
COPY . .
RUN pip install --no-deps --no-build-isolation -e .
ENV BANK_BIND=0.0.0.0:8000 \
    BANK_DATABASE_URL=sqlite:////data/bank.db
VOLUME ["/data"]
EXPOSE 8000
USER bank

# The slim image has no curl: the probe is a stdlib-only script that GETs /healthz on BANK_BIND.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]

CMD ["bankrace", "serve"]
