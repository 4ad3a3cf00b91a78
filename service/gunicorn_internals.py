"""Everything service/gunicorn_worker.py borrows from gunicorn beyond its public settings.

gunicorn documents worker classes as pluggable but not the gthread worker's
insides; the service's worker (docs/worker.md) subclasses them, overrides
some of their methods and replaces two module globals. Every such name is
imported, listed or replaced here, and only here, so that a gunicorn upgrade
is checked in one place: tests/unit/test_gunicorn_internals.py holds gunicorn
to each line of the contract below and, when one fails, says what to
re-check. The procedure is in docs/worker.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gunicorn
from gunicorn import glogging, util
from gunicorn.http import wsgi
from gunicorn.http.body import LengthReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import _DEFER, TConn, ThreadWorker

# The release the worker was written and measured against, and the major
# version pyproject.toml admits (gunicorn>=27,<28).
WRITTEN_FOR_VERSION = "27.0.1"
SUPPORTED_MAJOR_VERSION = 27
INSTALLED_VERSION: str = gunicorn.__version__

# What a worker thread's `handle` returns to hand a connection with no byte yet
# back to gthread's poller (gthread's `finish_request` tests for it).
DEFER: object = _DEFER

# The classes subclassed (re-exported so nothing else imports gunicorn's insides).
GthreadConnection = TConn
GthreadWorker = ThreadWorker
HttpResponse = wsgi.Response
GunicornLogger = glogging.Logger
BaseSocketUnreader = SocketUnreader
# A request body of known length (Content-Length, or none): `length` is what is left
# to read; `parser.mesg.body.reader` is one, and `parser.mesg.body.failed` says a read raised.
BodyLengthReader = LengthReader

# gunicorn's socket writes (public in util, but undocumented). gunicorn writes a
# response's head alone, its chunks and its last chunk with `sock.sendall` (util.write,
# util.write_chunk): the worker's AnswerSocket catches exactly that call.
write_nonblock = util.write_nonblock
to_bytestring = util.to_bytestring


def install_response_class(response_class: type) -> None:
    """Make every HTTP/1 response gthread frames in this process an instance of `response_class`.

    `wsgi.create` looks the module global `Response` up at each call when no
    response class is passed, and gthread's `handle_request` passes none.
    Called in the worker process after the fork, so the master keeps gunicorn's.
    """
    wsgi.Response = response_class


def install_error_writer(write_error: Callable[[Any, int, str, str], None]) -> None:
    """Route gunicorn's own refusals (400, 414, 431, ...) through `write_error`.

    `Worker.handle_error` calls `util.write_error(client, status, reason, message)`
    through the module, so replacing the global reaches it.
    """
    util.write_error = write_error


# The contract, checked against the installed gunicorn by the unit test. Each
# entry: the parameters gunicorn's method has (self included), in order.
#
# ThreadWorker methods the worker overrides: gthread must still call each of
# them where it did (a renamed one would silently stop being called).
WORKER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "init_process": ("self",),
    "get_thread_pool": ("self",),
    "notify": ("self",),
    "run": ("self",),
    "handle_quit": ("self", "sig", "frame"),
    "load_wsgi": ("self",),
    "enqueue_req": ("self", "conn"),
    "set_accept_enabled": ("self", "enabled"),
    "accept": ("self", "listener"),
    "handle": ("self", "conn"),
    "_keepalive_after": ("self", "conn", "keepalive"),
    "on_client_socket_readable": ("self", "conn", "client"),
    "on_pending_socket_readable": ("self", "conn", "client"),
    "handle_request": ("self", "req", "conn"),
    "handle_error": ("self", "req", "client", "addr", "exc"),
    "wait_for_and_dispatch_events": ("self", "timeout"),
}
# ThreadWorker methods the worker calls without overriding. `finish_request` is
# handed a RequestJob for `fs`: it may ask only `fs.cancelled()` and `fs.result()`.
WORKER_CALLS: dict[str, tuple[str, ...]] = {
    "finish_request": ("self", "conn", "fs"),
}
FINISH_REQUEST_FUTURE_METHODS: frozenset[str] = frozenset({"cancelled", "result"})
# ThreadWorker attributes the worker reads or uses, with what it does with them.
WORKER_ATTRIBUTES: dict[str, str] = {
    "tpool": "the pool of get_thread_pool (a RequestPool): gthread calls only shutdown(wait=False)",
    "method_queue": "defer(callback, *args) runs the callback on the main thread",
    "nr_conns": "the count of open connections, raised by accept",
    "sockets": "the listeners",
    "alive": "False once the worker stops",
    "wsgi": "the application, replaced by the overload gate in load_wsgi",
}
# TConn: the constructor, the methods overridden or called, the attributes used.
CONNECTION_INIT: tuple[str, ...] = ("self", "cfg", "sock", "client", "server")
CONNECTION_METHODS: dict[str, tuple[str, ...]] = {
    "init": ("self",),
    "close": ("self", "graceful"),
}
CONNECTION_ATTRIBUTES: tuple[str, ...] = ("sock", "parser", "initialized", "data_ready", "is_http2")
# wsgi.Response: the methods overridden or called, the attributes read.
RESPONSE_METHODS: dict[str, tuple[str, ...]] = {
    "should_close": ("self",),
    "default_headers": ("self",),
    "process_headers": ("self", "headers"),
    "force_close": ("self",),
    "write": ("self", "arg"),
    "write_file": ("self", "respiter"),
    "close": ("self",),
}
RESPONSE_ATTRIBUTES: tuple[str, ...] = (
    "req",
    "sock",
    "headers",
    "headers_sent",
    "chunked",
    "_omits_body",
    "response_length",
    "sent",
)
# The HTTP/1 parser (TConn.parser): its unreader is swapped for a deadline-bounded
# one, and an unread body is drained with a deadline.
PARSER_METHODS: dict[str, tuple[str, ...]] = {
    "finish_body": ("self", "deadline", "max_bytes"),
}
UNREADER_METHODS: dict[str, tuple[str, ...]] = {
    "chunk": ("self", "size_hint"),
}
# The parsed request's body: parser.mesg.body (reader, failed), its reader's length.
BODY_ATTRIBUTES: tuple[str, ...] = ("reader", "failed")
LENGTH_READER_ATTRIBUTES: tuple[str, ...] = ("length",)
UNREADER_ATTRIBUTES: tuple[str, ...] = ("sock", "buf", "mxchunk", "max_body_chunk")
# glogging.Logger: the access log the quiet logger turns off.
LOGGER_MEMBERS: dict[str, tuple[str, ...]] = {
    "access": ("self", "resp", "req", "environ", "request_time"),
}
LOGGER_PROPERTIES: tuple[str, ...] = ("access_log_enabled",)
