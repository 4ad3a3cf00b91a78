"""Helpers for the API tests: open accounts, take snapshots, check problem responses.

A snapshot is what a refused request must leave untouched: the watched
accounts (balance, version, timestamps), their whole journals, and the
bank-wide audit (which counts accounts and sums every balance and journal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import ADMIN_TOKEN

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
# Text that would betray an implementation detail (stack trace, SQL, driver, path).
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "SELECT",
    "INSERT",
    "UPDATE accounts",
    "sqlite",
    "sqlalchemy",
    "psycopg",
    "postgresql",
    "/work/",
    ".py",
)
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def open_account(
    client: FlaskClient,
    owner: str = "alice",
    opening_balance: int | None = None,
    currency: str | None = None,
) -> dict[str, Any]:
    """Open an account through the API and return its JSON (fails the test if refused)."""
    body: dict[str, Any] = {"owner": owner}
    if opening_balance is not None:
        body["opening_balance"] = opening_balance
    if currency is not None:
        body["currency"] = currency
    response = client.post("/accounts", json=body)
    assert response.status_code == 201, response.get_data(as_text=True)
    account: dict[str, Any] = response.get_json()
    return account


def journal(client: FlaskClient, account_id: int) -> list[dict[str, Any]]:
    """Every journal entry of the account, newest first, following every `next` link."""
    entries: list[dict[str, Any]] = []
    url: str | None = f"/accounts/{account_id}/transactions?limit=500"
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        page = response.get_json()
        entries.extend(page["items"])
        url = page["next"]
    return entries


@dataclass(frozen=True)
class Snapshot:
    accounts: dict[int, dict[str, Any]]
    journals: dict[int, list[dict[str, Any]]]
    audit: dict[str, Any]


def snapshot(client: FlaskClient, *account_ids: int) -> Snapshot:
    accounts = {}
    for account_id in account_ids:
        response = client.get(f"/accounts/{account_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        accounts[account_id] = response.get_json()
    audit = client.get("/audit")
    assert audit.status_code == 200
    return Snapshot(
        accounts=accounts,
        journals={account_id: journal(client, account_id) for account_id in account_ids},
        audit=audit.get_json(),
    )


def assert_problem(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and code, leaking nothing."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body.keys() >= PROBLEM_FIELDS, body
    assert body["status"] == status
    assert body["code"] == code
    assert all(isinstance(body[name], str) and body[name] for name in PROBLEM_FIELDS - {"status"})
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{marker!r} leaked into {text}"
    assert response.headers.get("X-Request-ID")
    if response.request.method == "POST":
        assert response.headers.get("X-Lock-Mode"), "a POST error must carry X-Lock-Mode"
    return body


def assert_validation(response: TestResponse, *fields: str) -> dict[str, Any]:
    """A 422 validation_error naming exactly these fields, each with a message."""
    body = assert_problem(response, 422, "validation_error")
    errors = body["errors"]
    assert all(set(error) == {"field", "message"} and error["message"] for error in errors)
    assert sorted(error["field"] for error in errors) == sorted(fields), errors
    return body


def set_mode(client: FlaskClient, **fields: object) -> dict[str, Any]:
    response = client.put("/mode", json=fields, headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.get_data(as_text=True)
    setting: dict[str, Any] = response.get_json()
    return setting
