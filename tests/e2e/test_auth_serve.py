"""Client authentication on a real `bankrace serve`, its tokens read from a file.

Every gunicorn worker reads BANK_API_TOKENS at start-up; the probes stay open
(the server is awaited through /readyz with no token), the bank answers 401
without one of the file's tokens, /metrics needs the admin token under
BANK_ADMIN_ONLY_READS, each client's Idempotency-Keys are its own, and the
server's log never holds a token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

TOKENS = ("e2e-client-token-alpha", "e2e-client-token-bravo")
ADMIN_TOKEN = "e2e-admin-token-charlie"
WRONG_TOKEN = "e2e-client-token-wrong"
TIMEOUT_SECONDS = 10


def test_serve_with_a_token_file_guards_the_bank_and_logs_no_token(tmp_path: Path) -> None:
    """Each token of the file opens the bank, others get 401; probes and docs stay open."""
    token_file = tmp_path / "api-tokens"
    token_file.write_text(f"# clients\n{TOKENS[0]}\n\n{TOKENS[1]}\n")
    settings = {
        "BANK_DATABASE_URL": f"sqlite:///{tmp_path / 'bank.db'}",
        "BANK_API_TOKENS": str(token_file),
        "BANK_ADMIN_TOKEN": ADMIN_TOKEN,
        "BANK_ADMIN_ONLY_READS": "1",
    }
    with ServerProcess(workdir=tmp_path, settings=settings) as server:
        session = requests.Session()

        def call(
            method: str, path: str, token: str | None = None, **kwargs: object
        ) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return session.request(
                method, server.url + path, headers=headers, timeout=TIMEOUT_SECONDS, **kwargs
            )

        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert call("GET", path).status_code == 200, path
        # BANK_ADMIN_ONLY_READS: /metrics shows the lock mode and the audit, so it is the admin's.
        assert call("GET", "/metrics").status_code == 401
        assert call("GET", "/metrics", TOKENS[0]).status_code == 403
        scraped = call("GET", "/metrics", ADMIN_TOKEN)
        assert scraped.status_code == 200 and "bankrace_lock_mode" in scraped.text
        refused = call("POST", "/accounts", json={"owner": "mallory", "opening_balance": 9})
        assert refused.status_code == 401
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert refused.json()["code"] == "unauthorized"
        assert "Server" not in refused.headers
        assert call("GET", "/accounts", WRONG_TOKEN).status_code == 401
        opened = call("POST", "/accounts", TOKENS[1], json={"owner": "alice", "opening_balance": 5})
        assert opened.status_code == 201
        for token in (*TOKENS, ADMIN_TOKEN):
            listed = call("GET", "/accounts", token)
            assert listed.status_code == 200
            assert [item["owner"] for item in listed.json()["items"]] == ["alice"]  # no mallory
            assert listed.headers["Cache-Control"] == "no-store"
            assert listed.headers["X-Content-Type-Options"] == "nosniff"
            assert "Server" not in listed.headers  # no banner (service/gunicorn_worker.py)
        assert call("GET", "/audit", TOKENS[0]).status_code == 403
        assert call("GET", "/audit", ADMIN_TOKEN).json()["total_balance"] == 5
        # Each client's Idempotency-Keys are its own, whichever worker answers.
        account = opened.json()["id"]
        deposits = [
            session.post(
                f"{server.url}/accounts/{account}/deposit",
                json={"amount": 10},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "e2e-1"},
                timeout=TIMEOUT_SECONDS,
            )
            for token in (TOKENS[0], TOKENS[1], TOKENS[0])
        ]
        assert [response.status_code for response in deposits] == [201, 201, 201]
        assert [response.headers.get("Idempotent-Replayed") for response in deposits] == [
            None,
            None,
            "true",
        ]
        assert call("GET", f"/accounts/{account}", TOKENS[0]).json()["balance"] == 25
    log = server.read_log()
    assert "POST /accounts 401" in log and "GET /audit 403" in log
    for secret in (*TOKENS, ADMIN_TOKEN, WRONG_TOKEN):
        assert secret not in log
