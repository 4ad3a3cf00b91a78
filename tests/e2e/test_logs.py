"""A real `bankrace serve` logs JSON lines on stderr, gunicorn's own included, with request ids.

The server's stdout and stderr go to one log file (tests/support/servers.py);
apart from the plain `bankrace: ...` lines that operators and the tests wait
for, every line must be one JSON object, and the lines of the requests sent
carry the ids sent with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "e2e-logs-admin-token"
REQUEST_TIMEOUT_SECONDS = 10
REQUEST_LOGGER = "service.api.request_log"


def parse_log(text: str) -> list[dict[str, Any]]:
    """Every line that is not a plain `bankrace: ...` line, parsed as a JSON object."""
    parsed = []
    for line in text.splitlines():
        if not line or line.startswith("bankrace: "):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(value, dict), line
        assert {"time", "level", "logger", "message"} <= value.keys(), line
        parsed.append(value)
    return parsed


def test_served_requests_and_gunicorn_log_json_with_request_ids(tmp_path: Path) -> None:
    """Two workers, a few requests: JSON lines only, each request's line with the id it was sent."""
    server = ServerProcess(
        tmp_path,
        {
            "BANK_DATABASE_URL": f"sqlite:///{tmp_path / 'bank.db'}",
            "BANK_WORKERS": "2",
            "BANK_THREADS": "2",
            "BANK_ADMIN_TOKEN": ADMIN_TOKEN,
            "BANK_ALLOW_UNSAFE_MODES": "1",
        },
    )
    with server, requests.Session() as session:
        opened = session.post(
            f"{server.url}/accounts",
            json={"owner": "Ophelia Privateowner", "opening_balance": 10},
            headers={"X-Request-ID": "e2e-open"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        assert opened.status_code == 201
        account = opened.json()["id"]
        deposit = session.post(
            f"{server.url}/accounts/{account}/deposit",
            json={"amount": 5},
            headers={"X-Request-ID": "e2e-deposit"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        assert deposit.status_code == 201
        mode = session.put(
            f"{server.url}/mode",
            json={"lock_mode": "unlocked", "race_window_ms": 5},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-ID": "e2e-mode"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        assert mode.status_code == 200
        missing = session.get(
            f"{server.url}/accounts/987654",
            headers={"X-Request-ID": "e2e-missing"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        assert missing.status_code == 404
    text = server.read_log()  # read after the stop: every worker has exited and flushed
    assert "bankrace: serving on " in text
    assert text.count("bankrace: worker ") == 2
    lines = parse_log(text)

    by_id = {
        line["request_id"]: line
        for line in lines
        if line["logger"] == REQUEST_LOGGER and "request_id" in line
    }
    expected = {
        "e2e-open": ("POST", "/accounts", 201, [account]),
        "e2e-deposit": ("POST", f"/accounts/{account}/deposit", 201, [account]),
        "e2e-mode": ("PUT", "/mode", 200, []),
        "e2e-missing": ("GET", "/accounts/987654", 404, [987654]),
    }
    for request_id, (method, path, status, account_ids) in expected.items():
        line = by_id[request_id]
        assert (line["method"], line["path"], line["status"]) == (method, path, status), line
        assert line["account_ids"] == account_ids
        assert line["client_address"] == "127.0.0.1"
    assert by_id["e2e-deposit"]["lock_mode"] == "locked"

    (changed,) = [line for line in lines if line["logger"] == "service.api.admin"]
    assert (changed["level"], changed["request_id"]) == ("WARNING", "e2e-mode")
    assert (changed["from_lock_mode"], changed["to_lock_mode"]) == ("locked", "unlocked")

    gunicorn_messages = [line["message"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(message.startswith("Starting gunicorn") for message in gunicorn_messages)
    assert sum(message.startswith("Booting worker") for message in gunicorn_messages) == 2
    for secret in (ADMIN_TOKEN, "Privateowner"):
        assert secret not in text
