"""The service's log: one JSON line per request, the request id on every line, no secrets.

Lines are captured through the handler the service itself installs on
stderr (service.logs.JsonLogHandler: python-json-logger plus the request-id
filter), pointed at a buffer, so what is asserted is the text an operator
reads. The Flask test client serves each request synchronously, so the
lines written between two requests are exactly the first request's.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from loadtest.service_process import free_port
from service import create_app
from service.api import request_log
from service.domain import LockTimeout, StoreUnavailable, WriteConflict
from service.logs import JsonLineFormatter, JsonLogHandler
from tests.api.helpers import ADMIN_HEADERS, open_account
from tests.api.test_errors import LEAKY_TEXT, FailingStore
from tests.conftest import ADMIN_TOKEN, make_config

REQUEST_LOGGER = "service.api.request_log"
ADMIN_LOGGER = "service.api.admin"
RFC_3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
REQUEST_LINE_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "account_ids",
    "client_address",
}
TEST_CLIENT_ADDRESS = "127.0.0.1"


class LogLines:
    """The JSON lines the service wrote since the last `take()`."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def take(self) -> list[dict[str, Any]]:
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        lines = [line for line in text.splitlines() if line]
        parsed = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all(isinstance(line, dict) for line in parsed), lines
        return parsed

    def raw(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    lines = LogLines()
    handler = JsonLogHandler(lines.buffer)
    service_logger = logging.getLogger("service")
    service_logger.addHandler(handler)
    yield lines
    service_logger.removeHandler(handler)


def request_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == REQUEST_LOGGER]


def only_request_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    found = request_lines(lines)
    assert len(found) == 1, lines
    return found[0]


def assert_rfc_3339_utc(value: str) -> None:
    assert RFC_3339_UTC.fullmatch(value), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() is not None and moment.utcoffset() == UTC.utcoffset(moment)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 600


@pytest.fixture
def failing(log_lines: LogLines) -> Iterator[tuple[FailingStore, FlaskClient]]:
    store = FailingStore()
    application = create_app(make_config("memory://"), store=store)
    yield store, application.test_client()
    store.close()


# --------------------------------------------------------------------------- the request line


def test_each_request_writes_one_json_line_with_its_fields(
    log_lines: LogLines, client: FlaskClient
) -> None:
    """A deposit writes exactly one request line: time, level, id, method, path, status, mode."""
    account = open_account(client, opening_balance=5)["id"]
    log_lines.take()
    response = client.post(
        f"/accounts/{account}/deposit", json={"amount": 3}, headers={"X-Request-ID": "dep-1"}
    )
    assert response.status_code == 201
    line = only_request_line(log_lines.take())
    assert line.keys() >= REQUEST_LINE_FIELDS | {"lock_mode"}, line
    assert_rfc_3339_utc(line["time"])
    assert line["level"] == "INFO"
    assert line["request_id"] == "dep-1"
    assert (line["method"], line["path"], line["status"]) == (
        "POST",
        f"/accounts/{account}/deposit",
        201,
    )
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    assert line["lock_mode"] == "locked" == response.headers["X-Lock-Mode"]
    assert line["account_ids"] == [account]
    assert line["client_address"] == TEST_CLIENT_ADDRESS
    assert "code" not in line


def test_generated_request_id_is_the_one_logged(log_lines: LogLines, client: FlaskClient) -> None:
    """Without X-Request-ID the generated id is both echoed and logged; a GET has no lock mode."""
    log_lines.take()
    response = client.get("/healthz", headers={"X-Request-ID": "has space"})
    line = only_request_line(log_lines.take())
    assert line["request_id"] == response.headers["X-Request-ID"] != "has space"
    assert (line["method"], line["path"], line["status"], line["account_ids"]) == (
        "GET",
        "/healthz",
        200,
        [],
    )
    assert "lock_mode" not in line


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_opened_account_is_named_but_not_its_owner(
    log_lines: LogLines, client: FlaskClient
) -> None:
    """Opening an account logs the new account's id; a refused opening logs none."""
    log_lines.take()
    account = open_account(client, owner="Wilhelmina Ownername")["id"]
    assert only_request_line(log_lines.take())["account_ids"] == [account]
    assert client.post("/accounts", json={"owner": ""}).status_code == 422
    assert only_request_line(log_lines.take())["account_ids"] == []
    assert "Ownername" not in log_lines.raw()


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_transfer_line_names_both_accounts(log_lines: LogLines, client: FlaskClient) -> None:
    """A transfer logs its two account ids, whether it succeeds or is refused after parsing."""
    source = open_account(client, opening_balance=10)["id"]
    target = open_account(client)["id"]
    log_lines.take()
    body = {"from_account": source, "to_account": target, "amount": 4}
    assert client.post("/transfers", json=body).status_code == 201
    assert only_request_line(log_lines.take())["account_ids"] == [source, target]
    too_much = {**body, "amount": 1000}
    assert client.post("/transfers", json=too_much).status_code == 409
    line = only_request_line(log_lines.take())
    assert line["account_ids"] == [source, target]
    assert (line["code"], line["level"]) == ("insufficient_funds", "INFO")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("data", "status", "logged_ids"),
    [
        (b'{"from_account": 1, "to_account": 2', 400, []),
        (b'{"from_account": 1, "to_account": 1, "amount": 1, "amount": 2}', 400, []),
        (b'{"from_account": "1", "to_account": 2, "amount": 1}', 422, [2]),
        (b'{"from_account": true, "to_account": 1e3, "amount": 1}', 422, []),
        (b'{"from_account": 1, "to_account": 10000000000000000000, "amount": 1}', 422, [1]),
        (b'{"from_account": 1, "to_account": 2, "amount": -1}', 422, [1, 2]),
    ],
)
def test_transfer_line_takes_ids_only_from_a_parsed_body(
    log_lines: LogLines, client: FlaskClient, data: bytes, status: int, logged_ids: list[int]
) -> None:
    """Account ids come from a body that parsed as JSON, and only the well-formed ones."""
    log_lines.take()
    response = client.post("/transfers", data=data, content_type="application/json")
    assert response.status_code == status, response.get_data(as_text=True)
    assert only_request_line(log_lines.take())["account_ids"] == logged_ids


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_unread_body_is_not_read_for_the_log(log_lines: LogLines, client: FlaskClient) -> None:
    """A transfer refused for its media type (415) logs no ids: its body was never parsed."""
    log_lines.take()
    body = json.dumps({"from_account": 1, "to_account": 2, "amount": 1})
    response = client.post("/transfers", data=body, content_type="text/plain")
    assert response.status_code == 415
    line = only_request_line(log_lines.take())
    assert (line["account_ids"], line["code"]) == ([], "unsupported_media_type")


def test_refusal_line_carries_the_problem_code_and_detail(
    log_lines: LogLines, client: FlaskClient
) -> None:
    """A 404 is logged at INFO with the problem's code and the detail the client saw."""
    log_lines.take()
    response = client.get("/accounts/999999", headers={"X-Request-ID": "missing-1"})
    line = only_request_line(log_lines.take())
    assert (line["status"], line["level"], line["code"]) == (404, "INFO", "not_found")
    assert line["detail"] == response.get_json()["detail"]
    assert line["account_ids"] == [999999]


# --------------------------------------------------------------------------- 503 and 500


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (LockTimeout("the lock wait ran out"), "lock_timeout"),
        (WriteConflict("the balance kept changing"), "write_conflict"),
        (StoreUnavailable("the database cannot be reached"), "store_unavailable"),
    ],
)
def test_every_503_is_a_warning_with_code_detail_and_request_id(
    log_lines: LogLines,
    failing: tuple[FailingStore, FlaskClient],
    error: Exception,
    code: str,
) -> None:
    """A lock timeout, write conflict or unreachable store: WARNING line, its code and detail."""
    store, client = failing
    account = open_account(client)["id"]
    store.write_error = error
    log_lines.take()
    response = client.post(
        f"/accounts/{account}/deposit", json={"amount": 1}, headers={"X-Request-ID": "busy-503"}
    )
    assert response.status_code == 503
    lines = log_lines.take()
    assert lines and all(line["request_id"] == "busy-503" for line in lines), lines
    line = only_request_line(lines)
    assert (line["level"], line["status"], line["code"]) == ("WARNING", 503, code)
    assert line["detail"] == str(error)
    assert line["lock_mode"] == "locked"


def test_a_500_logs_its_traceback_server_side_with_the_request_id(
    log_lines: LogLines, failing: tuple[FailingStore, FlaskClient]
) -> None:
    """A bug: an ERROR line with the traceback and the request line, both with the request id."""
    store, client = failing
    account = open_account(client)["id"]
    store.write_error = RuntimeError(LEAKY_TEXT)
    log_lines.take()
    response = client.post(
        f"/accounts/{account}/deposit", json={"amount": 1}, headers={"X-Request-ID": "bug-500"}
    )
    assert response.status_code == 500
    assert "Traceback" not in response.get_data(as_text=True)
    lines = log_lines.take()
    assert len(lines) >= 2 and all(line["request_id"] == "bug-500" for line in lines), lines
    traced = [line for line in lines if "exc_info" in line]
    assert len(traced) == 1 and traced[0]["level"] == "ERROR"
    assert "RuntimeError" in traced[0]["exc_info"] and "Traceback" in traced[0]["exc_info"]
    line = only_request_line(lines)
    assert (line["level"], line["status"], line["code"]) == ("ERROR", 500, "internal_error")


# --------------------------------------------------------------------------- PUT /mode


def put_mode(client: FlaskClient, request_id: str, **fields: object) -> int:
    headers = {**ADMIN_HEADERS, "X-Request-ID": request_id}
    return client.put("/mode", json=fields, headers=headers).status_code


def mode_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == ADMIN_LOGGER]


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_mode_change_logs_who_and_from_what_to_what(
    log_lines: LogLines, client: FlaskClient
) -> None:
    """Into an unsafe mode: WARNING; back to a safe one: INFO; address, id, before and after."""
    log_lines.take()
    assert put_mode(client, "mode-1", lock_mode="unlocked", race_window_ms=20) == 200
    (into_unsafe,) = mode_lines(log_lines.take())
    assert into_unsafe["level"] == "WARNING"
    assert into_unsafe["request_id"] == "mode-1"
    assert into_unsafe["client_address"] == TEST_CLIENT_ADDRESS
    assert (into_unsafe["from_lock_mode"], into_unsafe["from_race_window_ms"]) == ("locked", 0)
    assert (into_unsafe["to_lock_mode"], into_unsafe["to_race_window_ms"]) == ("unlocked", 20)
    assert put_mode(client, "mode-2", lock_mode="atomic") == 200
    lines = log_lines.take()
    (back_to_safe,) = mode_lines(lines)
    assert back_to_safe["level"] == "INFO"
    assert (back_to_safe["from_lock_mode"], back_to_safe["to_lock_mode"]) == ("unlocked", "atomic")
    assert back_to_safe["to_race_window_ms"] == 20
    assert only_request_line(lines)["status"] == 200


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"lock_mode": "unlocked"}, 401, "unauthorized"),
        (
            {"Authorization": "Bearer wrong-token-s3cr3t"},
            {"lock_mode": "unlocked"},
            403,
            "forbidden",
        ),
        (
            {"Authorization": "Basic d3Jvbmc6czNjcjN0"},
            {"lock_mode": "unlocked"},
            401,
            "unauthorized",
        ),
        (ADMIN_HEADERS, {"lock_mode": "sideways"}, 422, "validation_error"),
        (ADMIN_HEADERS, {}, 422, "validation_error"),
    ],
)
def test_refused_mode_change_is_logged_without_the_token(
    log_lines: LogLines,
    client: FlaskClient,
    headers: dict[str, str],
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """A PUT /mode refused 401, 403 or 422 leaves a WARNING line naming why, never a token."""
    log_lines.take()
    response = client.put("/mode", json=body, headers={**headers, "X-Request-ID": "refused-1"})
    assert response.status_code == status
    lines = log_lines.take()
    (refused,) = mode_lines(lines)
    assert (refused["level"], refused["code"]) == ("WARNING", code)
    assert refused["request_id"] == "refused-1"
    assert refused["client_address"] == TEST_CLIENT_ADDRESS
    assert only_request_line(lines)["status"] == status
    text = json.dumps(lines)
    for secret in ("wrong-token-s3cr3t", "d3Jvbmc6czNjcjN0", ADMIN_TOKEN):
        assert secret not in text


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_unsafe_mode_refused_by_the_replica_is_logged(
    log_lines: LogLines, database_url: str
) -> None:
    """On a replica that forbids unsafe modes, asking for one is a logged 403."""
    application = create_app(make_config(database_url, allow_unsafe_modes=False))
    try:
        log_lines.take()
        status = put_mode(application.test_client(), "unsafe-1", lock_mode="process-lock")
        assert status == 403
        (refused,) = mode_lines(log_lines.take())
        assert (refused["code"], refused["request_id"]) == ("forbidden", "unsafe-1")
    finally:
        application.extensions["bankrace"].store.close()


# --------------------------------------------------------------------------- what is never logged


def exercise(client: FlaskClient, owner: str) -> None:
    """Requests that carry secrets and personal data in headers, bodies and query strings."""
    secret_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Cookie": "session=c00kie-v4lue"}
    client.post("/accounts", json={"owner": owner}, headers=secret_headers)
    client.get("/accounts?limit=5&after=0&token=qu3ry-s3cret", headers=secret_headers)
    client.put("/mode", json={"lock_mode": "atomic"}, headers=secret_headers)
    client.put(
        "/mode", json={"lock_mode": "atomic"}, headers={"Authorization": "Bearer nope-s3cr3t"}
    )


SECRETS = (ADMIN_TOKEN, "c00kie-v4lue", "qu3ry-s3cret", "nope-s3cr3t")


def test_no_token_header_body_or_owner_is_logged(log_lines: LogLines, client: FlaskClient) -> None:
    """Tokens, cookies, query strings and owners' names sent to the service never reach the log."""
    exercise(client, owner="Zebedee Secretowner")
    text = log_lines.raw()
    assert request_lines(log_lines.take())  # the requests were logged
    for secret in (*SECRETS, "Zebedee", "Secretowner"):
        assert secret not in text, secret


@pytest.fixture
def unreachable_database() -> Iterator[Callable[[], Flask]]:
    """An app whose PostgreSQL URL has a password and a port nobody listens on."""
    built: list[Flask] = []
    url = f"postgresql+psycopg://bank:pa55-w0rd-s3cret@127.0.0.1:{free_port()}/bank"

    def build() -> Flask:
        built.append(create_app(make_config(url)))
        return built[-1]

    yield build
    for application in built:
        application.extensions["bankrace"].store.close()


def test_database_password_is_never_logged(
    log_lines: LogLines, unreachable_database: Callable[[], Flask]
) -> None:
    """A store down at boot and on every request: 503 lines, no password in any of them."""
    client = unreachable_database().test_client()
    assert client.get("/readyz", headers={"X-Request-ID": "down-1"}).status_code == 503
    exercise(client, owner="Zebedee Secretowner")
    text = log_lines.raw()
    lines = log_lines.take()
    (readyz,) = [line for line in request_lines(lines) if line["request_id"] == "down-1"]
    assert (readyz["status"], readyz["level"], readyz["code"]) == (
        503,
        "WARNING",
        "store_unavailable",
    )
    for secret in ("pa55-w0rd-s3cret", *SECRETS, "Zebedee"):
        assert secret not in text, secret


def test_lines_outside_a_request_have_no_request_id(log_lines: LogLines) -> None:
    """A line logged outside any request (start-up) is JSON and carries no request id."""
    logging.getLogger("service.test").warning("start-up note")
    (line,) = log_lines.take()
    assert (line["message"], line["level"], line["logger"]) == (
        "start-up note",
        "WARNING",
        "service.test",
    )
    assert "request_id" not in line
    assert_rfc_3339_utc(line["time"])


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_failure_to_describe_a_request_never_changes_its_answer(
    log_lines: LogLines, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If building the request line fails, the answer stands and a shorter line is still written."""

    def broken(_response: object) -> list[int]:
        raise RuntimeError("cannot read the ids")

    monkeypatch.setattr(request_log, "_account_ids", broken)
    log_lines.take()
    response = client.get("/healthz", headers={"X-Request-ID": "shaky-1"})
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})
    lines = log_lines.take()
    assert all(line["request_id"] == "shaky-1" for line in lines)
    (trouble,) = [line for line in lines if "exc_info" in line]
    assert trouble["level"] == "ERROR" and "cannot read the ids" in trouble["exc_info"]
    line = only_request_line([line for line in lines if "exc_info" not in line])
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)


# --------------------------------------------------------------------------- the cheaper paths


@pytest.mark.parametrize(
    "created",
    [
        1_764_000_000.0,
        1_764_000_000.0005,  # half a millisecond: cut, not rounded up
        1_764_000_000.9995,
        1_764_000_000.9999996,  # rounds to the next second at microseconds, as datetime does
        1_764_000_000.1234565,  # the microsecond's half goes to even
        0.0,
    ],
)
def test_the_line_time_is_datetimes_isoformat_to_the_millisecond(created: float) -> None:
    """The formatter's once-a-second time text gives what datetime.isoformat gave, edge or not."""
    formatter = JsonLineFormatter()
    record = logging.LogRecord("service.test", logging.INFO, "", 0, "note", None, None)
    for moment in (created, created - 1, created):  # a new second, back, and again from cache
        record.created = moment
        expected = datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")
        assert formatter.formatTime(record) == expected.replace("+00:00", "Z")


def test_generated_request_ids_are_32_hex_digits_and_unique_across_processes() -> None:
    """A forked worker draws its own ids: none repeats between parent and child or in either."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child writes its ids and leaves at once
        os.close(reader)
        os.write(writer, " ".join(request_log.new_request_id() for _ in range(2000)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child_ids = pipe.read().split()
    os.waitpid(child, 0)
    parent_ids = [request_log.new_request_id() for _ in range(2000)]
    every = child_ids + parent_ids
    assert len(child_ids) == 2000 and len(set(every)) == 4000
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in every)
