"""The `bankrace` command: serve, db upgrade, db current, config.

`serve` runs in the gunicorn master: it validates the configuration,
migrates an SQLite database on first run, stores the configured lock mode
(the latest start or PUT wins), then forks the workers, each of which calls
`create_app` and builds its own database pool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from sqlalchemy.engine import make_url

from service import build_store, create_app
from service.config import Config, ConfigError
from service.domain import StoreUnavailable
from service.schema import head_revision, upgrade

GUNICORN_TIMEOUT_SECONDS = 30
GUNICORN_GRACEFUL_TIMEOUT_SECONDS = 10
GUNICORN_KEEPALIVE_SECONDS = 5


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with gthread workers, configured from `Config` only."""

    def __init__(self, config: Config) -> None:
        self.bank_config = config
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": [self.bank_config.bind],
            "workers": self.bank_config.workers,
            "threads": self.bank_config.threads,
            "worker_class": "gthread",
            "timeout": GUNICORN_TIMEOUT_SECONDS,
            "graceful_timeout": GUNICORN_GRACEFUL_TIMEOUT_SECONDS,
            "keepalive": GUNICORN_KEEPALIVE_SECONDS,
            "errorlog": "-",
            "proc_name": "bankrace",
            # gunicorn >= 24 opens a control socket at one fixed path per
            # user; several instances on one machine would fight over it.
            "control_socket_disable": True,
            "post_worker_init": _announce_worker_ready,
        }
        for key, value in settings.items():
            if key in self.cfg.settings:  # older gunicorn lacks newer settings
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self.bank_config)


def _announce_worker_ready(worker: Any) -> None:
    # The app is loaded and the worker is about to accept: operators and the
    # end-to-end tests wait for one such line per worker before sending load.
    print(f"bankrace: worker {worker.pid} ready", file=sys.stderr, flush=True)


def is_sqlite(url: str) -> bool:
    return url != "memory://" and make_url(url).get_backend_name() == "sqlite"


def serve(config: Config) -> int:
    if config.is_memory and config.workers > 1:
        print(
            f"bankrace: the in-memory store lives in one process; BANK_WORKERS={config.workers} "
            "would give each worker its own bank. Use BANK_WORKERS=1 or a database.",
            file=sys.stderr,
        )
        return 2
    if is_sqlite(config.database_url):
        upgrade(config.database_url)
    if not config.is_memory:
        store = build_store(config)
        try:
            store.check_ready()
            store.save_mode(config.initial_mode)
        except StoreUnavailable as error:
            print(f"bankrace: {error.detail}", file=sys.stderr)
            return 2
        finally:
            store.close()  # never share a pool across the fork
    print(
        f"bankrace: serving on http://{config.bind} with {config.workers} worker(s) x "
        f"{config.threads} thread(s), lock mode {config.lock_mode.value}, "
        f"race window {config.race_window_ms} ms, store {_describe(config.database_url)}",
        file=sys.stderr,
    )
    GunicornServer(config).run()
    return 0


def _describe(url: str) -> str:
    if url == "memory://":
        return "memory"
    return make_url(url).render_as_string(hide_password=True)


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
    if arguments.command == "serve":
        return serve(config)
    if arguments.command == "config":
        for key, value in vars(config).items():
            shown = "***" if key == "admin_token" and value else value
            print(f"{key}: {shown}")
        return 0
    if config.is_memory:
        print("bankrace: the in-memory store has no schema to migrate", file=sys.stderr)
        return 2
    if arguments.db_command == "upgrade":
        upgrade(config.database_url, arguments.revision)
        print(f"bankrace: {_describe(config.database_url)} is at {arguments.revision}")
        return 0
    store = build_store(config)
    try:
        store.check_ready()
        print(f"current: head ({head_revision()})")
        return 0
    except StoreUnavailable as error:
        print(f"bankrace: {error.detail}", file=sys.stderr)
        return 1
    finally:
        store.close()
