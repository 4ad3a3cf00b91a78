"""What the benchmark asks the bank over HTTP besides the load itself.

Opening the runs' accounts, reading their balances before and after a run,
the server's audits, and switching the lock mode with `PUT /mode` (then
confirming on fresh connections that the workers serve it). Black box: the
API of DESIGN §3 only, nothing of the service's code.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from loadtest.bank_http import BankClient, BankError

LIST_PAGE_SIZE = 500  # the API's largest page
LIST_PAGES_LIMIT = 1000
SINGLE_READ_LIMIT = 20  # at most this many accounts are read one by one, else listed
OPENING_THREADS = 4
MODE_CONFIRMATIONS = 8  # fresh connections in a row that must see the new mode
MODE_DEADLINE_SECONDS = 5.0  # DESIGN: a mode change reaches every worker within 1 s
POLL_INTERVAL_SECONDS = 0.02


class BenchBank(BankClient):
    def __init__(self, base_url: str, admin_token: str) -> None:
        super().__init__(base_url)
        self.admin_token = admin_token

    def open_accounts(self, count: int, owner: str, opening_balance: int) -> list[int]:
        """Open `count` accounts over a few keep-alive connections; their ids in order."""

        def open_some(indexes: range) -> list[int]:
            client = BankClient(self.base_url)
            try:
                return [client.open_account(f"{owner}-{i}", opening_balance) for i in indexes]
            finally:
                client.close()

        if count <= SINGLE_READ_LIMIT:
            return [self.open_account(f"{owner}-{i}", opening_balance) for i in range(count)]
        chunks = [range(start, count, OPENING_THREADS) for start in range(OPENING_THREADS)]
        with ThreadPoolExecutor(OPENING_THREADS) as pool:
            opened = [account for chunk in pool.map(open_some, chunks) for account in chunk]
        return sorted(opened)

    def balances(self, account_ids: Iterable[int]) -> dict[int, int | None]:
        """Each account's stored balance; None where it could not be read."""
        wanted = sorted(set(account_ids))
        if len(wanted) <= SINGLE_READ_LIMIT:
            return {account: self._balance(account) for account in wanted}
        listed: dict[int, int] = {}
        url: str | None = f"/accounts?limit={LIST_PAGE_SIZE}&after={wanted[0] - 1}"
        for _page in range(LIST_PAGES_LIMIT):
            if url is None:
                break
            page = self.get_json(url)
            for item in page["items"]:
                listed[int(item["id"])] = int(item["balance"])
            if page["items"] and int(page["items"][-1]["id"]) >= wanted[-1]:
                break
            url = page.get("next")
        return {account: listed.get(account) for account in wanted}

    def _balance(self, account_id: int) -> int | None:
        try:
            return int(self.get_json(f"/accounts/{account_id}")["balance"])
        except (requests.RequestException, BankError, KeyError, ValueError):
            return None

    def account_audits(self, account_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        audits = {}
        for account in account_ids:
            try:
                audits[account] = dict(self.get_json(f"/accounts/{account}/audit"))
            except (requests.RequestException, BankError, ValueError):
                continue
        return audits

    def set_mode(self, lock_mode: str, race_window_ms: int) -> None:
        """PUT /mode, then poll until fresh connections see it (bounded by a deadline)."""
        response = self.session.put(
            f"{self.base_url}/mode",
            json={"lock_mode": lock_mode, "race_window_ms": race_window_ms},
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=self.timeout_seconds,
        )
        if response.status_code != 200:
            raise BankError(f"PUT /mode answered {response.status_code}: {response.text[:200]}")
        self.confirm_mode(lock_mode, race_window_ms)

    def confirm_mode(self, lock_mode: str, race_window_ms: int) -> None:
        # A new connection each time, so that gunicorn hands them to every
        # worker over the rounds, not only the one this session talks to.
        wanted = (lock_mode, race_window_ms)
        seen_in_a_row = 0
        deadline = time.monotonic() + MODE_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            answer = requests.get(
                f"{self.base_url}/mode",
                headers={"Connection": "close"},
                timeout=self.timeout_seconds,
            ).json()
            served = (answer.get("lock_mode"), answer.get("race_window_ms"))
            seen_in_a_row = seen_in_a_row + 1 if served == wanted else 0
            if seen_in_a_row >= MODE_CONFIRMATIONS:
                return
            time.sleep(POLL_INTERVAL_SECONDS)  # polling interval under a deadline
        raise BankError(
            f"the workers did not all serve lock mode {lock_mode} within "
            f"{MODE_DEADLINE_SECONDS:.0f} s of PUT /mode"
        )
