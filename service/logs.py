"""Structured logs: one JSON object per line on stderr, for the service and for gunicorn.

`logging_config()` is the `logging.config.dictConfig` that `bankrace serve`
hands gunicorn (`logconfig_dict`): the master applies it before it forks,
so gunicorn's own lines and the service's come out in one format, every one
through `JsonLogHandler`. `configure_service_logging()` gives the service's
loggers that handler when nothing did (tests, a bare `gunicorn
'service:create_app()'`).

Every line written while a request is served carries that request's id
(`RequestIdFilter` reads it from `flask.g`), so one request can be followed
from the balancer's log into the replica's. This module formats and routes
lines; it knows nothing of the bank, and what a line says is decided where
it is logged (service/api/request_log.py, service/api/admin.py, ...).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO, Any

from flask import g, has_request_context
from pythonjsonlogger.core import LogData
from pythonjsonlogger.json import JsonEncoder, JsonFormatter

SERVICE_LOGGER = "service"
# Standard fields first, in this order; anything a call passes in `extra`
# follows them. Renamed to the names the docs promise.
STANDARD_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d"
RENAMED_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger"}


class RequestIdFilter(logging.Filter):
    """Stamp the id of the request being served (if any) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            request_id = g.get("request_id")
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonLineFormatter(JsonFormatter):
    """python-json-logger's formatter with an RFC 3339 UTC time (`2026-11-29T10:00:00.123Z`).

    Two costs of every line are paid once instead (the request log is on
    every request's path): python-json-logger builds a new JSON encoder per
    line (`json.dumps(cls=...)`), here one encoder of the same class and
    options serves every line; and the time's date and seconds are formatted
    once per second, only the milliseconds per line. The text is the same.
    """

    def __init__(self) -> None:
        super().__init__(STANDARD_FIELDS, rename_fields=RENAMED_FIELDS)
        self._encoder = JsonEncoder(ensure_ascii=True)
        # The standard fields as `format` writes them: (attribute, name in the line).
        # None (python-json-logger's own path only) if an option it honours is set.
        self._fast_fields: tuple[tuple[str, str], ...] | None = tuple(
            (field, self._get_rename(field)) for field in self._required_fields
        )
        if self.defaults or self.static_fields or self.timestamp or self.rename_fields_keep_missing:
            self._fast_fields = None
        if not set(self.rename_fields) <= self._skip_fields:  # an extra field would be renamed
            self._fast_fields = None
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # As datetime.fromtimestamp(...).isoformat(timespec="milliseconds"): the
        # fraction rounded to microseconds (half to even), then cut to milliseconds.
        fraction, whole = math.modf(record.created)
        second, microsecond = int(whole), round(fraction * 1_000_000)
        if microsecond >= 1_000_000:
            second, microsecond = second + 1, microsecond - 1_000_000
        millisecond = microsecond // 1000
        if second != self._second:  # a race between threads only formats the same second twice
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{millisecond:03d}Z"

    def jsonify_log_record(self, log_data: LogData) -> str:
        return self._encoder.encode(log_data)

    def format(self, record: logging.LogRecord) -> str:
        """python-json-logger's `format`, its plain case done in one pass (the same text).

        A record with a string message and no exception or stack (every
        request line) gets the standard fields, then its extra attributes in
        the order they were set, as `add_fields` and `merge_record_extra`
        would write them, without their per-field renaming and checks (8.5 ->
        7.2 µs for a request line, measured alone). Anything else goes
        python-json-logger's way.
        """
        if (
            isinstance(record.msg, dict)
            or record.exc_info
            or record.exc_text
            or record.stack_info
            or self._fast_fields is None
        ):
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        log_data: LogData = {
            renamed: record.__dict__.get(field) for field, renamed in self._fast_fields
        }
        skip = self._skip_fields
        for key, value in record.__dict__.items():
            if key not in skip and not key.startswith("_"):
                log_data[key] = value
        return self.prefix + self._encoder.encode(self.process_log_record(log_data))


class JsonLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """One JSON line per record on stderr (or the given stream), request id included."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.setFormatter(JsonLineFormatter())
        self.addFilter(RequestIdFilter())


def logging_config() -> dict[str, Any]:
    """The dictConfig for a whole `bankrace serve` process tree (gunicorn's `logconfig_dict`).

    gunicorn merges it over its defaults key by key, so it names every
    handler, logger and the root it relies on. One handler on the root
    serves everyone: the service (INFO and up), gunicorn's error log
    (start, worker boots and exits, timeouts) and any library's warnings.
    gunicorn's access log stays off: the service writes its own line per
    request, with the request id and the lock mode.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": JsonLogHandler}},
        "root": {"level": "WARNING", "handlers": ["json"]},
        "loggers": {
            SERVICE_LOGGER: {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def configure_service_logging() -> None:
    """Make sure the service's INFO lines reach stderr as JSON, once per process."""
    service_logger = logging.getLogger(SERVICE_LOGGER)
    service_logger.setLevel(logging.INFO)
    for owner in (logging.getLogger(), service_logger):
        if any(isinstance(handler, JsonLogHandler) for handler in owner.handlers):
            return  # gunicorn applied logging_config(), or an earlier app did this
    service_logger.addHandler(JsonLogHandler())
