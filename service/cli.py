"""The `bankrace` command: serve, db upgrade, db current, config.

`serve` runs in the gunicorn master: it validates the configuration,
migrates an SQLite database on first run, stores the configured lock mode
(the latest start or PUT wins), makes the directory where the workers'
metrics meet (service/metrics.py; removed when it stops), then forks the
workers, each of which calls `create_app` and builds its own database pool.
SIGTERM stops it gracefully: gunicorn answers the requests in flight (up to
GUNICORN_GRACEFUL_TIMEOUT_SECONDS) before the workers exit.

What goes wrong before gunicorn runs is told in one line on stderr, never a
traceback, and never a secret: a bad setting exits 2 (config.py names the
variable), a database that cannot be reached, opened or migrated exits 1
with the URL (password masked) and the driver's own reason.
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, quote_plus

from alembic.util.exc import CommandError as MigrationError
from flask import Flask
from gunicorn.app.base import BaseApplication
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from service import build_store, create_app, metrics
from service.config import HIDDEN, SECRET_QUERY_KEYS, Config, ConfigError, redacted_url
from service.domain import DomainError
from service.gunicorn_worker import HeadBoundedThreadWorker, QuietAccessLogger
from service.logs import logging_config
from service.schema import head_revision, upgrade

GUNICORN_TIMEOUT_SECONDS = 30
GUNICORN_GRACEFUL_TIMEOUT_SECONDS = 10
GUNICORN_KEEPALIVE_SECONDS = 5
UNIX_BIND_PREFIX = "unix:"
# gthread with a deadline on every request head (service/gunicorn_worker.py).
WORKER_CLASS = f"{HeadBoundedThreadWorker.__module__}.{HeadBoundedThreadWorker.__qualname__}"
# gunicorn's logger, minus the access log it would format and drop (service/logs.py).
LOGGER_CLASS = f"{QuietAccessLogger.__module__}.{QuietAccessLogger.__qualname__}"


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with (head-bounded) gthread workers, configured from `Config` only."""

    def __init__(self, config: Config) -> None:
        self.bank_config = config
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": [self.bank_config.bind],
            "workers": self.bank_config.workers,
            "threads": self.bank_config.threads,
            "worker_class": WORKER_CLASS,
            "timeout": GUNICORN_TIMEOUT_SECONDS,
            "graceful_timeout": GUNICORN_GRACEFUL_TIMEOUT_SECONDS,
            "keepalive": GUNICORN_KEEPALIVE_SECONDS,
            # Each worker its own listening socket (SO_REUSEPORT): the kernel spreads
            # new connections between them. On one shared socket, whichever worker
            # woke first took a burst of connections whole: 32 keep-alive connections
            # all went to one worker in 4 of 10 runs while the other idled
            # (docs/performance.md). With one worker there is nothing to spread, and
            # the master's socket keeps queueing connections while a worker restarts.
            # (A unix socket cannot be shared so: each worker would replace the file.)
            "reuse_port": spreads_connections(self.bank_config),
            "errorlog": "-",
            "proc_name": "bankrace",
            # gunicorn >= 24 opens a control socket at one fixed path per
            # user; several instances on one machine would fight over it.
            "control_socket_disable": True,
            "post_worker_init": _worker_ready,
            "child_exit": _forget_worker,
            "logconfig_dict": logging_config(),
            "logger_class": LOGGER_CLASS,
        }
        for key, value in settings.items():
            if key in self.cfg.settings:  # older gunicorn lacks newer settings
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self.bank_config)


def spreads_connections(config: Config) -> bool:
    """Whether each worker listens on its own SO_REUSEPORT socket (several, on TCP)."""
    return config.workers > 1 and not config.bind.startswith(UNIX_BIND_PREFIX)


def address_unavailable(bind: str) -> str | None:
    """Why HOST:PORT cannot be listened on (in use, not this machine's), or None.

    With `spreads_connections` the master binds nothing and each worker binds
    its own socket: a port already taken would fail in every worker, over and
    over, instead of once here. A probe without SO_REUSEPORT also collides with
    another server's SO_REUSEPORT sockets, which a worker's bind would join.
    """
    host, _, port = bind.rpartition(":")
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            probe.bind(address)
    except OSError as error:
        return error.strerror or str(error)
    return None


def _worker_ready(worker: Any) -> None:
    """gunicorn's post_worker_init: the app is loaded, the worker is about to accept."""
    freeze_startup_heap()
    # Operators and the end-to-end tests wait for one such line per worker before
    # sending load.
    print(f"bankrace: worker {worker.pid} ready", file=sys.stderr, flush=True)


def freeze_startup_heap() -> None:
    """Leave what the worker made before serving out of every garbage collection.

    Those objects (gunicorn, Flask, SQLAlchemy, the app: about 115,000) live as
    long as the worker. Scanned by each full collection, they held the GIL for
    45-68 ms, and when that worker's writer held the SQLite writer lock meanwhile,
    every worker's deposits waited: the p99 of the first deposits after a run of
    reads was 72-97 ms against 44 ms. Frozen (gc.freeze), a full collection scans
    only what serving made since: about 1 ms (docs/performance.md).
    """
    gc.freeze()


def _forget_worker(server: Any, worker: Any) -> None:
    # In the master, when a worker exits: its live gauges go, its counts stay.
    metrics.worker_exited(worker.pid)


def is_sqlite(url: str) -> bool:
    return url != "memory://" and make_url(url).get_backend_name() == "sqlite"


class DatabaseFailed(Exception):
    """A database step of a command failed; the message is the one line to print."""


# What a database can do wrong while a command prepares it: unreachable,
# refused, unwritable path, busy, not migrated, a migration that fails.
DATABASE_ERRORS = (DomainError, SQLAlchemyError, OSError, MigrationError)


@contextmanager
def database_step(url: str, what: str) -> Iterator[None]:
    """Turn a database failure into `DatabaseFailed` with one line naming it."""
    try:
        yield
    except DATABASE_ERRORS as error:
        raise DatabaseFailed(failure_line(url, what, error)) from error


def failure_line(url: str, what: str, error: BaseException) -> str:
    """`bankrace: cannot <what> the database at <url, password masked>: <reasons>`."""
    reasons: list[str] = []
    if isinstance(error, DomainError):
        reasons.append(error.detail)
    driver_error = error if isinstance(error, DBAPIError) else error.__cause__
    if isinstance(driver_error, DBAPIError):
        reasons.append(_first_line(str(driver_error.orig)).removeprefix("connection failed: "))
    elif isinstance(error, FileExistsError | NotADirectoryError):
        reasons.append(f"{error.filename} is not a folder")  # the database's folder is a file
    elif isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        reasons.append(f"{where}{error.strerror or error}")
    elif not isinstance(error, DomainError):
        reasons.append(_first_line(str(error)))
    line = f"bankrace: cannot {what} the database at {redacted_url(url)}: {'; '.join(reasons)}"
    return _without_secrets(line, url)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")


def _without_secrets(text: str, url: str) -> str:
    """A driver may quote its connection string back: mask any form of the password."""
    if url == "memory://":
        return text
    parsed = make_url(url)
    passwords = [parsed.password, *(parsed.query.get(key) for key in SECRET_QUERY_KEYS)]
    for password in filter(None, passwords):
        for form in {str(password), quote(str(password), safe=""), quote_plus(str(password))}:
            text = text.replace(form, HIDDEN)
    return text


def serve(config: Config) -> int:
    if config.is_memory and config.workers > 1:
        print(
            f"bankrace: the in-memory store lives in one process; BANK_WORKERS={config.workers} "
            "would give each worker its own bank. Use BANK_WORKERS=1 or a database.",
            file=sys.stderr,
        )
        return 2
    if not config.bind.startswith(UNIX_BIND_PREFIX):
        reason = address_unavailable(config.bind)
        if reason is not None:
            print(f"bankrace: cannot listen on {config.bind}: {reason}", file=sys.stderr)
            return 1
    if is_sqlite(config.database_url):
        with database_step(config.database_url, "migrate"):
            upgrade(config.database_url)
    if not config.is_memory:
        with database_step(config.database_url, "use"):
            store = build_store(config)
            try:
                store.check_ready()
                store.save_mode(config.initial_mode)
            finally:
                store.close()  # never share a pool across the fork
    print(
        f"bankrace: serving on http://{config.bind} with {config.workers} worker(s) x "
        f"{config.threads} thread(s), lock mode {config.lock_mode.value}, "
        f"race window {config.race_window_ms} ms, store {_describe(config.database_url)}",
        file=sys.stderr,
    )
    # Before the fork: every worker writes its metrics there, GET /metrics sums them.
    with metrics.shared_directory():
        GunicornServer(config).run()
    return 0


def _describe(url: str) -> str:
    return "memory" if url == "memory://" else redacted_url(url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bankrace", description="A bank-transaction service with switchable lock modes."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service under gunicorn (settings: BANK_* env)")
    database = commands.add_parser("db", help="database schema")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade_parser = database_commands.add_parser("upgrade", help="run Alembic migrations")
    upgrade_parser.add_argument("revision", nargs="?", default="head")
    database_commands.add_parser("current", help="print the schema revision and the head")
    commands.add_parser("config", help="validate and print the configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"bankrace: {error}", file=sys.stderr)
        return 2
    try:
        return _run(arguments, config)
    except DatabaseFailed as failure:
        print(failure, file=sys.stderr)
        return 1


def _run(arguments: argparse.Namespace, config: Config) -> int:
    if arguments.command == "serve":
        return serve(config)
    if arguments.command == "config":
        for key, value in config.shown_settings().items():
            print(f"{key}: {value}")
        return 0
    if config.is_memory:
        print("bankrace: the in-memory store has no schema to migrate", file=sys.stderr)
        return 2
    if arguments.db_command == "upgrade":
        with database_step(config.database_url, "migrate"):
            upgrade(config.database_url, arguments.revision)
        print(f"bankrace: {_describe(config.database_url)} is at {arguments.revision}")
        return 0
    with database_step(config.database_url, "use"):
        store = build_store(config)
        try:
            store.check_ready()
        finally:
            store.close()
    print(f"current: head ({head_revision()})")
    return 0
