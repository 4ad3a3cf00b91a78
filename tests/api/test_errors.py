"""Error handling across the API: body parsing, routing, problem+json, headers, no leaks."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from flask.testing import FlaskClient

from service import create_app
from service.domain import (
    LockTimeout,
    OutcomeUnknown,
    StoreUnavailable,
    WriteConflict,
)
from service.idempotency import Completion
from service.stores.base import LegWrite, TransferSpec, Written
from service.stores.memory import MemoryStore
from tests.api.helpers import ADMIN_HEADERS, assert_problem, open_account, snapshot
from tests.conftest import TEST_LOCK_TIMEOUT_MS, make_config

MAX_BODY_BYTES = 64 * 1024
GENERATED_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
POST_ENDPOINTS = ["/accounts", "/accounts/{id}/deposit", "/accounts/{id}/withdraw", "/transfers"]
DEPOSIT = "/accounts/{id}/deposit"


def across_endpoints(every: list[Any], representative: list[Any]) -> list[Any]:
    """Every case on the deposit endpoint, representative ones on the other POSTs.

    One parser serves all POST bodies; the full matrix on every endpoint and
    backend would only repeat it.
    """
    return [
        pytest.param(DEPOSIT, value, id=f"deposit-{index}") for index, value in enumerate(every)
    ] + [
        pytest.param(template, value, id=f"{template}-{index}")
        for template in POST_ENDPOINTS
        if template != DEPOSIT
        for index, value in enumerate(representative)
    ]


@pytest.fixture
def accounts(shared_client: FlaskClient) -> tuple[int, int]:
    """Two funded accounts to aim requests at (and to check nothing happened to)."""
    return (
        open_account(shared_client, opening_balance=100)["id"],
        open_account(shared_client, opening_balance=100)["id"],
    )


def endpoint_url(template: str, accounts: tuple[int, int]) -> str:
    return template.format(id=accounts[0])


def valid_body(template: str, accounts: tuple[int, int]) -> dict[str, Any]:
    if template == "/accounts":
        return {"owner": "alice"}
    if template == "/transfers":
        return {"from_account": accounts[0], "to_account": accounts[1], "amount": 1}
    return {"amount": 1}


# --------------------------------------------------------------------------- malformed JSON

MALFORMED_BODIES = [
    b"",
    b"{",
    b"}",
    b"{'amount': 1}",
    b'{"amount": 1,}',
    b'{"amount": 1} {"amount": 2}',
    b'{"amount": 01}',
    b"[]",
    b'[{"amount": 1}]',
    b'"amount"',
    b"42",
    b"null",
    b"true",
    b'{"amount": NaN}',
    b'{"amount": Infinity}',
    b'{"amount": -Infinity}',
    b'{"owner": NaN, "amount": 1}',
    b"\xff\xfe\xfd",
    b'{"owner": "\xff", "amount": 1}',
    b'{"owner": "caf\xe9", "amount": 1}',
    b"[" * 20_000 + b"]" * 20_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"amount": 500, "amount": 1}',
    b'{"amount": 1, "amount": 1}',
    b'{"owner": "a", "owner": "b", "amount": 1}',
    b'{"amount": 1, "extra": {"k": 1, "k": 2}}',
]


REPRESENTATIVE_MALFORMED_BODIES = [
    b"{",
    b"[]",
    b"42",
    b'{"amount": NaN}',
    b'{"owner": "\xff", "amount": 1}',
    b"[" * 20_000 + b"]" * 20_000,
    b'{"amount": 500, "amount": 1}',
]


@pytest.mark.parametrize(
    ("template", "data"), across_endpoints(MALFORMED_BODIES, REPRESENTATIVE_MALFORMED_BODIES)
)
def test_malformed_json_is_400_and_changes_nothing(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str, data: bytes
) -> None:
    """Invalid JSON, non-objects, NaN, bad UTF-8, deep nesting, duplicate keys: 400, no change."""
    before = snapshot(shared_client, *accounts)
    response = shared_client.post(
        endpoint_url(template, accounts), data=data, content_type="application/json"
    )
    assert_problem(response, 400, "malformed_json")
    assert snapshot(shared_client, *accounts) == before


@pytest.mark.parametrize("template", POST_ENDPOINTS)
def test_integer_too_long_to_parse_is_a_client_error(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str
) -> None:
    """A 5000-digit number is refused as a client error (400 or 422), never a 500."""
    before = snapshot(shared_client, *accounts)
    response = shared_client.post(
        endpoint_url(template, accounts),
        data=b'{"amount": ' + b"9" * 5000 + b"}",
        content_type="application/json",
    )
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    assert_problem(response, response.status_code, response.get_json()["code"])
    assert snapshot(shared_client, *accounts) == before


@pytest.mark.parametrize(
    ("template", "encoding"),
    [("/accounts", encoding) for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32")]
    + [("/accounts", "latin-1")]
    + [(template, "utf-16") for template in POST_ENDPOINTS if template != "/accounts"],
)
def test_json_not_in_utf8_is_400_and_changes_nothing(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str, encoding: str
) -> None:
    """A valid body encoded as UTF-16/32, or Latin-1 with a non-ASCII owner, is not JSON: 400."""
    body = {**valid_body(template, accounts)}
    if template == "/accounts":
        body["owner"] = "Zoë"
    before = snapshot(shared_client, *accounts)
    data = json.dumps(body, ensure_ascii=False).encode(encoding)
    response = shared_client.post(
        endpoint_url(template, accounts), data=data, content_type="application/json"
    )
    assert_problem(response, 400, "malformed_json")
    assert snapshot(shared_client, *accounts) == before


@pytest.mark.parametrize("template", POST_ENDPOINTS)
def test_utf8_byte_order_mark_is_tolerated(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str
) -> None:
    """A UTF-8 byte order mark before the JSON is ignored, as RFC 8259 allows."""
    data = json.dumps(valid_body(template, accounts))
    response = shared_client.post(
        endpoint_url(template, accounts),
        data=b"\xef\xbb\xbf" + data.encode(),
        content_type="application/json",
    )
    assert response.status_code == 201, response.get_data(as_text=True)


# --------------------------------------------------------------------------- media type, size


CONTENT_TYPES = [
    None,
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "application/json-patch+json",
    "application/problem+json",
]


@pytest.mark.parametrize(
    ("template", "content_type"), across_endpoints(CONTENT_TYPES, [None, "text/plain"])
)
def test_wrong_or_missing_content_type_is_415_and_changes_nothing(
    shared_client: FlaskClient,
    accounts: tuple[int, int],
    template: str,
    content_type: str | None,
) -> None:
    """A body without Content-Type: application/json is 415, even if it is valid JSON."""
    before = snapshot(shared_client, *accounts)
    data = json.dumps(valid_body(template, accounts))
    response = shared_client.post(
        endpoint_url(template, accounts), data=data, content_type=content_type
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert snapshot(shared_client, *accounts) == before


@pytest.mark.parametrize("template", POST_ENDPOINTS)
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"]
)
def test_json_media_type_with_parameters_is_accepted(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str, content_type: str
) -> None:
    """application/json with a charset parameter or in other letter case is JSON."""
    data = json.dumps(valid_body(template, accounts))
    response = shared_client.post(
        endpoint_url(template, accounts), data=data, content_type=content_type
    )
    assert response.status_code == 201, response.get_data(as_text=True)


def padded_body(template: str, accounts: tuple[int, int], size: int) -> bytes:
    """A JSON object of exactly `size` bytes: the valid body plus an unknown padding field."""
    body = valid_body(template, accounts)
    body["padding"] = ""
    body["padding"] = "x" * (size - len(json.dumps(body).encode()))
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


@pytest.mark.parametrize("template", POST_ENDPOINTS)
def test_body_over_64_kib_is_413_and_changes_nothing(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str
) -> None:
    """A body of 64 KiB + 1 byte is 413 payload_too_large; nothing changes."""
    before = snapshot(shared_client, *accounts)
    response = shared_client.post(
        endpoint_url(template, accounts),
        data=padded_body(template, accounts, MAX_BODY_BYTES + 1),
        content_type="application/json",
    )
    assert_problem(response, 413, "payload_too_large")
    assert snapshot(shared_client, *accounts) == before


@pytest.mark.parametrize("template", POST_ENDPOINTS)
def test_body_of_exactly_64_kib_is_read(
    shared_client: FlaskClient, accounts: tuple[int, int], template: str
) -> None:
    """A body of exactly 64 KiB is parsed (and refused only for its unknown padding field)."""
    before = snapshot(shared_client, *accounts)
    response = shared_client.post(
        endpoint_url(template, accounts),
        data=padded_body(template, accounts, MAX_BODY_BYTES),
        content_type="application/json",
    )
    body = assert_problem(response, 422, "validation_error")
    assert [error["field"] for error in body["errors"]] == ["padding"]
    assert snapshot(shared_client, *accounts) == before


def test_big_body_with_wrong_media_type_is_refused_without_change(
    shared_client: FlaskClient, accounts: tuple[int, int]
) -> None:
    """An oversized body that is not JSON is refused (413 or 415), and changes nothing."""
    before = snapshot(shared_client, *accounts)
    response = shared_client.post(
        f"/accounts/{accounts[0]}/deposit",
        data=b"x" * (MAX_BODY_BYTES * 2),
        content_type="text/plain",
    )
    assert response.status_code in (413, 415)
    assert_problem(response, response.status_code, response.get_json()["code"])
    assert snapshot(shared_client, *accounts) == before


# --------------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nope",
        "/account",
        "/accounts/1/nope",
        "/accounts/1/deposit/extra",
        "/transfer",
        "/transactions",
        "/accounts/99999999999999999999999/deposit",
    ],
)
def test_unknown_route_is_404_problem(shared_client: FlaskClient, method: str, path: str) -> None:
    """Any method on a path the API does not have is a 404 not_found problem."""
    response = shared_client.open(path, method=method, json={"amount": 1})
    body = assert_problem(response, 404, "not_found")
    assert body["instance"] == path


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/accounts/1", {"GET"}),
        ("PUT", "/accounts/1", {"GET"}),
        ("PATCH", "/accounts/1", {"GET"}),
        ("PUT", "/accounts", {"GET", "POST"}),
        ("DELETE", "/accounts", {"GET", "POST"}),
        ("GET", "/accounts/1/deposit", {"POST"}),
        ("PUT", "/accounts/1/withdraw", {"POST"}),
        ("POST", "/accounts/1/transactions", {"GET"}),
        ("POST", "/accounts/1/audit", {"GET"}),
        ("GET", "/transfers", {"POST"}),
        ("DELETE", "/transfers/1", {"GET"}),
        ("POST", "/transactions/1", {"GET"}),
        ("POST", "/mode", {"GET", "PUT"}),
        ("DELETE", "/mode", {"GET", "PUT"}),
        ("POST", "/audit", {"GET"}),
        ("POST", "/healthz", {"GET"}),
        ("PUT", "/readyz", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    shared_client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    """A known path with the wrong method is 405 method_not_allowed naming the allowed ones."""
    before = shared_client.get("/audit").get_json()
    response = shared_client.open(path, method=method, json={"amount": 1})
    assert_problem(response, 405, "method_not_allowed")
    advertised = {name.strip() for name in response.headers["Allow"].split(",")}
    expected = allowed | {"OPTIONS"} | ({"HEAD"} if "GET" in allowed else set())
    assert advertised == expected
    assert shared_client.get("/audit").get_json() == before


# --------------------------------------------------------------------------- headers


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/healthz", {}),
    ("GET", "/accounts", {}),
    ("GET", "/accounts/999999999", {}),
    ("GET", "/nope", {}),
    ("POST", "/accounts", {"json": {"owner": "x"}}),
    ("POST", "/accounts", {"json": {"owner": ""}}),
    ("POST", "/accounts", {"data": "x", "content_type": "text/plain"}),
    ("POST", "/accounts", {"data": "{", "content_type": "application/json"}),
    ("POST", "/accounts/999999999/deposit", {"json": {"amount": 1}}),
    ("POST", "/audit", {}),
    ("PUT", "/mode", {"json": {"lock_mode": "locked"}}),
    ("PUT", "/mode", {"json": {"lock_mode": "locked"}, "headers": ADMIN_HEADERS}),
    ("DELETE", "/accounts", {}),
]


@pytest.mark.parametrize(("method", "path", "options"), REQUESTS)
def test_every_response_carries_a_request_id(
    shared_client: FlaskClient, method: str, path: str, options: dict[str, Any]
) -> None:
    """Successes and errors carry X-Request-ID: generated, or echoed when the client sent one."""
    generated = shared_client.open(path, method=method, **options)
    assert GENERATED_REQUEST_ID.fullmatch(generated.headers["X-Request-ID"])
    headers = {**options.get("headers", {}), "X-Request-ID": "client-id-42"}
    echoed = shared_client.open(path, method=method, **{**options, "headers": headers})
    assert echoed.headers["X-Request-ID"] == "client-id-42"


def test_request_ids_differ_per_request(shared_client: FlaskClient) -> None:
    """Two requests without an id get two different generated ids."""
    first = shared_client.get("/healthz").headers["X-Request-ID"]
    second = shared_client.get("/healthz").headers["X-Request-ID"]
    assert first != second


def test_request_id_of_200_printable_characters_is_echoed(shared_client: FlaskClient) -> None:
    """The longest accepted request id (200 printable ASCII characters) comes back unchanged."""
    given = "a-Z_0.9:/~!" * 18 + "ab"
    assert len(given) == 200
    response = shared_client.get("/healthz", headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given


@pytest.mark.parametrize("given", ["has space", "x" * 201, "tab\there", "é-accent"])
def test_unusable_request_id_is_replaced(shared_client: FlaskClient, given: str) -> None:
    """A request id with spaces, control or non-ASCII characters, or over 200 chars: replaced."""
    response = shared_client.get("/healthz", headers={"X-Request-ID": given})
    assert GENERATED_REQUEST_ID.fullmatch(response.headers["X-Request-ID"])


@pytest.mark.parametrize(
    ("path", "options", "status"),
    [
        ("/accounts", {"json": {"owner": "x"}}, 201),
        ("/accounts/{id}/deposit", {"json": {"amount": 1}}, 201),
        ("/accounts/{id}/withdraw", {"json": {"amount": 1}}, 201),
        ("/transfers", {"json": "transfer"}, 201),
        ("/accounts", {"data": "{}", "content_type": "text/plain"}, 415),
        ("/accounts", {"json": {"owner": ""}}, 422),
        ("/accounts/{id}/deposit", {"json": {"amount": 1.5}}, 422),
        ("/accounts", {"data": "[1]", "content_type": "application/json"}, 400),
        ("/accounts/{id}/withdraw", {"json": {"amount": 10**9}}, 409),
        ("/accounts/999999999/deposit", {"json": {"amount": 1}}, 404),
        ("/nope", {"json": {}}, 404),
        ("/audit", {}, 405),
        (
            "/accounts",
            {"data": b"{" * (MAX_BODY_BYTES + 1), "content_type": "application/json"},
            413,
        ),
    ],
)
def test_every_post_response_carries_the_lock_mode(
    shared_client: FlaskClient,
    accounts: tuple[int, int],
    path: str,
    options: dict[str, Any],
    status: int,
) -> None:
    """Every POST response, success or refusal, names the lock mode in X-Lock-Mode."""
    if options.get("json") == "transfer":
        options = {"json": valid_body("/transfers", accounts)}
    response = shared_client.post(path.format(id=accounts[0]), **options)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["X-Lock-Mode"] == "locked"


# --------------------------------------------------------------------------- stores that fail


class FailingStore(MemoryStore):
    """The in-memory store, except that writes (and optionally reads) raise a chosen error."""

    def __init__(self) -> None:
        super().__init__(lock_timeout_ms=TEST_LOCK_TIMEOUT_MS)
        self.write_error: Exception | None = None
        self.read_error: Exception | None = None
        self.ready_error: Exception | None = None
        self.error_after_write: Exception | None = None  # written, then the answer is lost

    def write_legs_holding_locks(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        # Every mode's write ends here (outside `exclusive` after taking the row locks).
        if self.write_error is not None:
            raise self.write_error
        written = super().write_legs_holding_locks(writes, lock_mode, transfer, completion)
        if self.error_after_write is not None:
            raise self.error_after_write
        return written

    def get_account(self, account_id: int) -> Any:
        if self.read_error is not None:
            raise self.read_error
        return super().get_account(account_id)

    def check_ready(self) -> None:
        if self.ready_error is not None:
            raise self.ready_error


@pytest.fixture
def failing() -> Iterator[tuple[FailingStore, FlaskClient]]:
    store = FailingStore()
    application = create_app(make_config("memory://"), store=store)
    yield store, application.test_client()
    store.close()


LEAKY_TEXT = (
    'Traceback (most recent call last):\n  File "/work/main/service/stores/sql.py", line 9\n'
    "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) SELECT balance FROM accounts"
)


def test_unexpected_error_is_a_bare_500_problem(
    failing: tuple[FailingStore, FlaskClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A bug answers 500 internal_error with no trace, SQL or path; the server log keeps it."""
    store, client = failing
    account = open_account(client, opening_balance=10)["id"]
    store.write_error = RuntimeError(LEAKY_TEXT)
    store.read_error = RuntimeError(LEAKY_TEXT)
    for response in (
        client.post(f"/accounts/{account}/deposit", json={"amount": 1}),
        client.get(f"/accounts/{account}"),
    ):
        body = assert_problem(response, 500, "internal_error")
        assert "OperationalError" not in response.get_data(as_text=True)
        assert "Retry-After" not in response.headers
        assert set(body) == {"type", "title", "status", "detail", "code", "instance"}
    assert "SELECT balance FROM accounts" in caplog.text


@pytest.mark.parametrize(
    ("error", "code", "retry_after"),
    [
        (LockTimeout("the lock wait ran out"), "lock_timeout", "1"),
        (WriteConflict("kept changing"), "write_conflict", "1"),
        (StoreUnavailable("the database cannot be reached"), "store_unavailable", "5"),
    ],
)
@pytest.mark.parametrize("operation", ["deposit", "withdraw", "transfer"])
def test_unavailable_store_is_503_with_retry_after_and_no_change(
    failing: tuple[FailingStore, FlaskClient],
    error: Exception,
    code: str,
    retry_after: str,
    operation: str,
) -> None:
    """Lock timeouts, write conflicts and an unreachable store answer 503 with Retry-After."""
    store, client = failing
    source = open_account(client, opening_balance=10)["id"]
    target = open_account(client)["id"]
    before = snapshot(client, source, target)
    store.write_error = error
    if operation == "transfer":
        body = {"from_account": source, "to_account": target, "amount": 1}
        response = client.post("/transfers", json=body)
    else:
        response = client.post(f"/accounts/{source}/{operation}", json={"amount": 1})
    assert_problem(response, 503, code)
    assert response.headers["Retry-After"] == retry_after
    assert response.headers["X-Lock-Mode"] == "locked"
    store.write_error = None
    assert snapshot(client, source, target) == before


LOST_COMMIT = OutcomeUnknown("the connection broke while committing: it may have been applied")


def money_request(client: FlaskClient, operation: str, source: int, target: int, **kw: Any) -> Any:
    if operation == "transfer":
        body = {"from_account": source, "to_account": target, "amount": 1}
        return client.post("/transfers", json=body, **kw)
    return client.post(f"/accounts/{source}/{operation}", json={"amount": 1}, **kw)


@pytest.mark.parametrize("operation", ["deposit", "withdraw", "transfer"])
def test_a_lost_commit_is_503_outcome_unknown_with_retry_after(
    failing: tuple[FailingStore, FlaskClient], operation: str
) -> None:
    """A write whose outcome is unknown has its own code, outcome_unknown, not store_unavailable."""
    store, client = failing
    source, target = open_account(client, opening_balance=10)["id"], open_account(client)["id"]
    store.write_error = LOST_COMMIT
    response = money_request(client, operation, source, target)
    body = assert_problem(response, 503, "outcome_unknown")
    assert body["status"] == 503 and body["detail"] == LOST_COMMIT.detail
    assert response.headers["Retry-After"] == "5"


def test_a_committed_write_whose_answer_was_lost_replays_with_its_key(
    failing: tuple[FailingStore, FlaskClient],
) -> None:
    """After outcome_unknown, the key's stored response survives the release: the repeat replays
    it and the money moved once (a key that was never completed would run again instead)."""
    store, client = failing
    source, target = open_account(client, opening_balance=10)["id"], open_account(client)["id"]
    headers = {"Idempotency-Key": "lost-commit-1"}
    store.error_after_write = LOST_COMMIT  # the write and its stored response are in
    lost = money_request(client, "transfer", source, target, headers=headers)
    assert_problem(lost, 503, "outcome_unknown")
    store.error_after_write = None
    repeat = money_request(client, "transfer", source, target, headers=headers)
    assert repeat.status_code == 201 and repeat.headers["Idempotent-Replayed"] == "true"
    after = snapshot(client, source, target)
    assert [after.accounts[key]["balance"] for key in (source, target)] == [9, 1]


def test_readyz_when_the_store_is_down_is_503(failing: tuple[FailingStore, FlaskClient]) -> None:
    """/readyz answers 503 store_unavailable with Retry-After while /healthz stays 200."""
    store, client = failing
    store.ready_error = StoreUnavailable("the database cannot be reached")
    response = client.get("/readyz")
    assert_problem(response, 503, "store_unavailable")
    assert response.headers["Retry-After"] == "5"
    assert client.get("/healthz").get_json() == {"status": "ok"}


# --------------------------------------------------------------------------- problem shape


def test_problem_fields_are_consistent(shared_client: FlaskClient) -> None:
    """type is a URI naming the code, title is human text, instance is the request path."""
    body = assert_problem(shared_client.get("/accounts/999999999"), 404, "not_found")
    assert body["type"].endswith("not_found")
    assert ":" in body["type"]
    assert body["title"] and body["title"] != body["code"]
    assert body["instance"] == "/accounts/999999999"
    assert "999999999" in body["detail"]


def test_validation_problem_lists_every_error(shared_client: FlaskClient) -> None:
    """A validation problem has one {field, message} per bad field, each named in its detail."""
    response = shared_client.post(
        "/accounts", json={"owner": "", "currency": "x", "opening_balance": -1}
    )
    body = assert_problem(response, 422, "validation_error")
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"owner", "currency", "opening_balance"}
    assert all(field in body["detail"] for field in fields)


MAX_ID = 10**18 - 1
# (method, path, body, the errors list answered): its words and its order, unknown fields
# first (as sent), then missing ones, then bad values (both as declared).
EXACT_ERRORS: list[tuple[str, str, dict[str, Any], list[tuple[str, str]]]] = [
    (
        "POST",
        DEPOSIT,
        {"amount": 10.5, "zz": 1, "aa": 2},
        [
            ("zz", "unknown field"),
            ("aa", "unknown field"),
            ("amount", "must be an integer number of minor units"),
        ],
    ),
    ("POST", DEPOSIT, {"amount": 0}, [("amount", "must be at least 1")]),
    ("POST", DEPOSIT, {"amount": 10**30}, [("amount", "must be at most 1000000000000")]),
    ("POST", DEPOSIT, {"amount": None}, [("amount", "must be an integer number of minor units")]),
    (
        "POST",
        "/transfers",
        {"amount": "10", "to_account": 0, "note": "x"},
        [
            ("note", "unknown field"),
            ("from_account", "is required"),
            ("to_account", f"must be a positive integer account id, at most {MAX_ID}"),
            ("amount", "must be an integer number of minor units"),
        ],
    ),
    (
        "POST",
        "/transfers",
        {"from_account": True, "to_account": 1.0, "amount": 1},
        [
            ("from_account", "must be a positive integer account id"),
            ("to_account", "must be a positive integer account id"),
        ],
    ),
    (
        "POST",
        "/accounts",
        {"owner": " ", "currency": "usd", "opening_balance": -1},
        [
            ("owner", "must not be empty"),
            ("currency", "must be three uppercase letters (ISO 4217 style)"),
            ("opening_balance", "must be at least 0"),
        ],
    ),
    (
        "POST",
        "/accounts",
        {"owner": "a\x1fb", "opening_balance": 2**53},
        [
            ("owner", "must not contain control characters"),
            ("opening_balance", f"must be at most {2**53 - 1}"),
        ],
    ),
    ("POST", "/accounts", {"owner": 5}, [("owner", "must be a string")]),
    ("PUT", "/mode", {}, [("lock_mode", "give lock_mode, race_window_ms or both")]),
    (
        "PUT",
        "/mode",
        {"lock_mode": None, "race_window_ms": 5001},
        [
            (
                "lock_mode",
                "must be one of unlocked, locked, process-lock, optimistic, atomic, redis-lock, "
                "fenced",
            ),
            ("race_window_ms", "must be between 0 and 5000"),
        ],
    ),
    (
        "PUT",
        "/mode",
        {"race_window_ms": False},
        [("race_window_ms", "must be an integer number of milliseconds")],
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "errors"), EXACT_ERRORS)
def test_validation_errors_read_exactly_so(
    shared_client: FlaskClient,
    method: str,
    path: str,
    body: dict[str, Any],
    errors: list[tuple[str, str]],
) -> None:
    """Each bad field's words, and the order of the list, are what clients have been given."""
    account = open_account(shared_client)["id"]
    headers = ADMIN_HEADERS if method == "PUT" else {}
    response = shared_client.open(
        path.format(id=account), method=method, json=body, headers=headers
    )
    answered = assert_problem(response, 422, "validation_error")["errors"]
    assert [(error["field"], error["message"]) for error in answered] == errors
