"""A small blocking HTTP client for the set-up and the reconciliation of a load test.

It opens the run's accounts before the load starts and reads balances, audits
and journals after it stops. The load itself goes through Locust's client; this
one uses `requests`, so it works inside Locust (gevent patches its sockets) and
outside it (the comparison runner, tests). It knows the API of DESIGN §3 and
nothing of the service's code.

Every request carries the client token, when given (`loadtest.client_token`);
GET /mode and GET /audit, which BANK_ADMIN_ONLY_READS keeps for the admin
(403 to a client token), are asked again with the admin token, when given. A
401 raises `TokenRefused` at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from loadtest.client_token import bearer, refusal
from loadtest.hold_tally import FinalHoldRead
from loadtest.reconcile import AccountObservation, scan_journal

REQUEST_TIMEOUT_SECONDS = 30.0
JOURNAL_PAGE_SIZE = 500  # the API's largest page
JOURNAL_PAGES_LIMIT = 400  # at most 200 000 entries replayed per account


class BankError(RuntimeError):
    """The bank answered something the load test cannot work with."""


class TokenRefused(BankError):
    """401: the request had no client token, or not one the service takes."""


def check_authorized(response: requests.Response) -> None:
    """Raise `TokenRefused`, with the line that says what to do, for a 401."""
    if response.status_code == 401:
        raise TokenRefused(refusal(response.request.headers))


def admin_read(
    send: Callable[[dict[str, str]], requests.Response], admin_headers: dict[str, str]
) -> requests.Response | None:
    """An admin-only read (GET /mode, /audit, /metrics under BANK_ADMIN_ONLY_READS).

    Sent as the client first (`send({})`), and again with the admin token when
    that is refused, 401 or 403: without client tokens the service answers an
    admin-only read without any token 401, not 403. None while it stays 403
    (the admin token is missing or not this service's); a 401 after that
    raises `TokenRefused`.
    """
    response = send({})
    if response.status_code in (401, 403) and admin_headers:
        response = send(admin_headers)
    check_authorized(response)
    return None if response.status_code == 403 else response


def answer_json(response: requests.Response) -> Any:
    if response.status_code != 200:
        detail = response.text[:200]
        raise BankError(f"GET {response.url} answered {response.status_code}: {detail}")
    return response.json()


def final_hold_read(account: Any, sent_at: float, read_at: float) -> FinalHoldRead | None:
    """An account's balance, held and available; None from a service without holds."""
    values = [account.get(name) for name in ("balance", "held", "available")]
    if not all(isinstance(value, int) for value in values):
        return None
    balance, held, available = (int(value) for value in values)
    return FinalHoldRead(balance, held, available, read_at, sent_at)


class BankClient:
    def __init__(
        self,
        base_url: str,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.session = requests.Session()
        self.session.headers.update(bearer(token))
        self.admin_headers = bearer(admin_token)

    def close(self) -> None:
        self.session.close()

    def raw_get(self, path_or_url: str, headers: dict[str, str] | None = None) -> requests.Response:
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        return self.session.get(url, headers=headers, timeout=self.timeout_seconds)

    def get(self, path_or_url: str, headers: dict[str, str] | None = None) -> requests.Response:
        response = self.raw_get(path_or_url, headers)
        check_authorized(response)
        return response

    def get_json(self, path_or_url: str) -> Any:
        return answer_json(self.get(path_or_url))

    def get_admin_read(self, path: str) -> Any | None:
        """GET /mode or /audit: with the client token, then with the admin token on a 403.

        None when BANK_ADMIN_ONLY_READS keeps it for an admin token this client lacks.
        """
        response = admin_read(lambda headers: self.raw_get(path, headers), self.admin_headers)
        return None if response is None else answer_json(response)

    def is_ready(self) -> bool:
        try:
            response = self.session.get(f"{self.base_url}/readyz", timeout=self.timeout_seconds)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def mode(self) -> dict[str, Any]:
        """GET /mode; empty when only the admin may read it and this client cannot."""
        return dict(self.get_admin_read("/mode") or {})

    def open_account(self, owner: str, opening_balance: int) -> int:
        response = self.session.post(
            f"{self.base_url}/accounts",
            json={"owner": owner, "currency": "USD", "opening_balance": opening_balance},
            timeout=self.timeout_seconds,
        )
        check_authorized(response)
        if response.status_code != 201:
            detail = response.text[:200]
            raise BankError(f"POST /accounts answered {response.status_code}: {detail}")
        return int(response.json()["id"])

    def journal(self, account_id: int) -> tuple[list[dict[str, Any]], bool]:
        """Every journal entry of an account (newest first pages), and whether all were read."""
        entries: list[dict[str, Any]] = []
        url: str | None = f"/accounts/{account_id}/transactions?limit={JOURNAL_PAGE_SIZE}"
        for _page in range(JOURNAL_PAGES_LIMIT):
            if url is None:
                return entries, True
            page = self.get_json(url)
            entries.extend(page["items"])
            url = page.get("next")
        return entries, url is None

    def observe(self, account_id: int) -> AccountObservation:
        """Balance (and held, available), audit and the client's replay of one account's journal."""
        try:
            sent_at = time.time()
            account = self.get_json(f"/accounts/{account_id}")
            read_at = time.time()
            balance = int(account["balance"])
        except (requests.RequestException, BankError, KeyError, ValueError, TypeError) as error:
            return AccountObservation(account_id, None, error=str(error))
        holds = final_hold_read(account, sent_at, read_at)
        audit: dict[str, Any] | None
        try:
            audit = dict(self.get_json(f"/accounts/{account_id}/audit"))
        except (requests.RequestException, BankError, ValueError):
            audit = None
        try:
            entries, complete = self.journal(account_id)
            journal = scan_journal(entries, complete) if complete else None
        except (requests.RequestException, BankError, KeyError, ValueError):
            journal = None
        return AccountObservation(account_id, balance, audit, journal, holds=holds)

    def server_audit(self) -> dict[str, Any] | None:
        try:
            audit = self.get_admin_read("/audit")
        except (requests.RequestException, BankError, ValueError):
            return None
        return None if audit is None else dict(audit)
