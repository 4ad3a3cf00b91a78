"""bankrace: a bank-transaction service that shows why concurrent money code needs locks.

`create_app` is the only place that wires things: configuration, the store,
the mode source, the process-local locks, the blueprints and the error
handlers. Nothing is built at import time, so gunicorn workers build their
own database pools after the fork.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, request
from flask.sessions import NullSession, SecureCookieSessionInterface
from werkzeug.routing import BaseConverter

from service.api import accounts, admin, auth, docs, headers, holds, ops, request_log, transfers
from service.api.context import EXTENSION_KEY
from service.api.errors import register_error_handlers
from service.api.parsing import MAX_BODY_BYTES, MAX_ID_DIGITS
from service.config import Config
from service.domain import Unavailable
from service.keyed_locks import KeyedLocks
from service.logs import configure_service_logging
from service.overload import WORKER_BOUNDS_IO
from service.redis_locks import RedisLocks
from service.schema import head_revision
from service.services import Bank, KeyJanitor, ModeSource
from service.single_process import refuse_a_second_worker
from service.stores.base import Store
from service.stores.memory import MemoryStore
from service.stores.sql import SqlStore

logger = logging.getLogger(__name__)
BODY_READ_TIMEOUT_SECONDS = 10


class IdConverter(BaseConverter):
    """A positive id that fits a BIGINT; anything else is simply not a route (404)."""

    regex = rf"[1-9][0-9]{{0,{MAX_ID_DIGITS - 1}}}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: object) -> str:
        return str(value)


class NoSessions(SecureCookieSessionInterface):
    """The API keeps no session (no secret key, no cookie): one shared empty session.

    Flask builds a new null session for every request otherwise; this one is
    read-only (any write raises), so sharing it between requests shares nothing.
    """

    shared = NullSession()

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def make_null_session(self, app: Flask) -> NullSession:
        return self.shared


class BankFlask(Flask):
    """Flask, asking once per hook, view and error handler whether it is a coroutine.

    Flask's `ensure_sync` inspects every before- and after-request hook and
    the view on every request (seven times for GET /healthz); the answer for
    a function never changes, so it is kept. A few dozen functions at most.
    """

    ENSURED_MAX = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ensured: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._ensured[func]
        except KeyError:
            ensured = super().ensure_sync(func)
            if len(self._ensured) < self.ENSURED_MAX:
                self._ensured[func] = ensured
            return ensured
        except TypeError:  # an unhashable callable
            return super().ensure_sync(func)


def build_store(config: Config) -> Store:
    if config.is_memory:
        refuse_a_second_worker("in-memory")  # one process, one bank (service/single_process.py)
        return MemoryStore(lock_timeout_ms=config.lock_timeout_ms)
    return SqlStore(
        config.database_url,
        lock_timeout_ms=config.lock_timeout_ms,
        pool_size=config.threads,
        expected_revision=head_revision(),
    )


def create_app(config: Config | None = None, store: Store | None = None) -> Flask:
    config = config or Config.from_env()
    configure_service_logging()  # before anything below can log
    app = BankFlask(__name__, static_folder=None)  # no /static route: every route is in the API
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.converters["id"] = IdConverter
    app.url_map.strict_slashes = False
    app.session_interface = NoSessions()

    store = store or build_store(config)
    modes = ModeSource(
        store, allow_unsafe_modes=config.allow_unsafe_modes, initial=config.initial_mode
    )
    _seed_mode(store, config)
    app.extensions[EXTENSION_KEY] = Bank(
        store=store,
        modes=modes,
        process_locks=KeyedLocks(config.lock_timeout_ms),
        lock_timeout_ms=config.lock_timeout_ms,
        transfer_lock_order=config.transfer_lock_order,
        idempotency_ttl_hours=config.idempotency_ttl_hours,
        key_janitor=KeyJanitor(store),
        redis_locks=RedisLocks(
            config.redis_url,
            lease_ms=config.redis_lock_ttl_ms,
            lock_timeout_ms=config.lock_timeout_ms,
            key_prefix=config.redis_prefix,
        ),
    )

    for blueprint in (
        accounts.blueprint,
        holds.blueprint,
        transfers.blueprint,
        admin.blueprint,
        ops.blueprint,
        docs.blueprint,
    ):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    request_log.install(app)
    app.before_request(_bound_body_reads)
    headers.install(app, config.cors_origins)  # a CORS preflight is answered before auth
    auth.install(app, config)
    return app


def _seed_mode(store: Store, config: Config) -> None:
    """Store the configured mode unless a shared store already has one.

    `bankrace serve` overwrites it once per start (the latest start wins);
    a worker must not, or a restarted worker would undo a `PUT /mode`. A
    store that is down, unmigrated or busy (another writer holding SQLite's
    lock past the lock timeout) must not stop the worker from booting --
    gunicorn stops the whole service when a worker fails to boot: the worker
    serves the configured mode, answers 503 and /readyz says why until the
    store is back, and the mode source seeds it later.
    """
    try:
        store.save_mode(config.initial_mode, overwrite=not store.shared_across_processes)
    except Unavailable as error:
        logger.warning("store not usable at start-up: %s", error.detail)


def _bound_body_reads() -> None:
    """A client that stops sending half-way through its body must not hold a thread forever.

    Under plain gunicorn (`gunicorn 'service:create_app()'`), gthread reads the
    body with a blocking socket and no deadline; a read timeout turns a stalled
    upload into a 408. gthread puts the socket back to blocking (no timeout)
    for the next request. The same timeout bounds each write of the answer.
    Under `bankrace serve` the worker bounds both itself (one deadline for the
    head and the whole body, a write timeout: service/gunicorn_worker.py), and
    its gate says so: no timeout is set here (it would cost every request
    three system calls).
    """
    environ = request.environ
    if environ.get(WORKER_BOUNDS_IO):
        return
    connection = environ.get("gunicorn.socket")
    if connection is not None:
        connection.settimeout(BODY_READ_TIMEOUT_SECONDS)
