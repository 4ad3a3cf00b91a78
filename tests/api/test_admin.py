"""The mode API: reading and changing the lock mode, its guards, and every mode's results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.domain import MAX_BALANCE_MINOR, LockMode
from tests.api.helpers import (
    ADMIN_HEADERS,
    assert_problem,
    assert_validation,
    journal,
    open_account,
    set_mode,
    snapshot,
)
from tests.conftest import ADMIN_TOKEN, SQL_BACKENDS, make_config

ALL_MODES = [mode.value for mode in LockMode]
UNSAFE_MODES = ["unlocked", "process-lock", "redis-lock"]


@pytest.fixture
def make_app(database_url: str) -> Iterator[Any]:
    """Build apps on the test's database with config overrides; close their stores after."""
    built: list[Flask] = []

    def build(**overrides: object) -> Flask:
        application = create_app(make_config(database_url, **overrides))
        built.append(application)
        return application

    yield build
    for application in built:
        application.extensions["bankrace"].store.close()


def current_mode(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/mode")
    assert response.status_code == 200
    mode: dict[str, Any] = response.get_json()
    return mode


# --------------------------------------------------------------------------- GET /mode


def test_get_mode_shape(shared_client: FlaskClient) -> None:
    """GET /mode names the mode, the race window, every mode and whether unsafe ones are allowed."""
    assert current_mode(shared_client) == {
        "lock_mode": "locked",
        "race_window_ms": 0,
        "modes": [
            "unlocked",
            "locked",
            "process-lock",
            "optimistic",
            "atomic",
            "redis-lock",
            "fenced",
        ],
        "unsafe_modes_allowed": True,
    }


# On a database the configured mode is stored by `bankrace serve` in the gunicorn
# master (the latest start or PUT wins), not by each worker's create_app, so
# that a restarted worker cannot undo a PUT; that path is an end-to-end test.
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_get_mode_reports_the_configured_start_mode(make_app: Any) -> None:
    """An in-memory app configured with optimistic and a 7 ms window serves exactly that."""
    client = make_app(lock_mode=LockMode.OPTIMISTIC, race_window_ms=7).test_client()
    mode = current_mode(client)
    assert (mode["lock_mode"], mode["race_window_ms"]) == ("optimistic", 7)
    response = client.post("/accounts", json={"owner": "a"})
    assert response.headers["X-Lock-Mode"] == "optimistic"


# --------------------------------------------------------------------------- PUT /mode: guards


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": ""}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": "Bearer "}, 401, "unauthorized"),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, "unauthorized"),
        ({"Authorization": ADMIN_TOKEN}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token-entirely"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"}, 403, "forbidden"),
    ],
)
def test_put_mode_without_the_right_token_changes_nothing(
    shared_client: FlaskClient, headers: dict[str, str], status: int, code: str
) -> None:
    """No or malformed Authorization is 401 with WWW-Authenticate; a wrong token is 403."""
    before = current_mode(shared_client)
    response = shared_client.put("/mode", json={"lock_mode": "atomic"}, headers=headers)
    assert_problem(response, status, code)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert current_mode(shared_client) == before


def test_bearer_scheme_is_case_insensitive(shared_client: FlaskClient) -> None:
    """`bearer TOKEN` is accepted like `Bearer TOKEN` (auth schemes are case-insensitive)."""
    response = shared_client.put(
        "/mode", json={"race_window_ms": 0}, headers={"Authorization": f"bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200


def test_admin_disabled_refuses_even_a_plausible_token(make_app: Any) -> None:
    """Without BANK_ADMIN_TOKEN, PUT /mode is 403 forbidden whatever is sent; nothing changes."""
    client = make_app(admin_token=None).test_client()
    before = current_mode(client)
    for headers in ({}, ADMIN_HEADERS, {"Authorization": "Bearer None"}):
        response = client.put("/mode", json={"lock_mode": "atomic"}, headers=headers)
        assert_problem(response, 403, "forbidden")
    assert current_mode(client) == before


@pytest.mark.parametrize("mode", UNSAFE_MODES)
def test_unsafe_mode_is_forbidden_when_not_allowed(make_app: Any, mode: str) -> None:
    """With unsafe modes not allowed, switching to an unsafe mode is 403; nothing changes."""
    client = make_app(allow_unsafe_modes=False).test_client()
    before = current_mode(client)
    assert before["unsafe_modes_allowed"] is False
    response = client.put(
        "/mode", json={"lock_mode": mode, "race_window_ms": 9}, headers=ADMIN_HEADERS
    )
    assert_problem(response, 403, "forbidden")
    assert current_mode(client) == before
    account = open_account(client, opening_balance=1)
    assert journal(client, account["id"])[0]["lock_mode"] == "locked"


def test_safe_modes_are_allowed_when_unsafe_ones_are_not(make_app: Any) -> None:
    """Refusing unsafe modes does not refuse the safe ones."""
    client = make_app(allow_unsafe_modes=False).test_client()
    for mode in ("optimistic", "atomic", "fenced", "locked"):
        assert set_mode(client, lock_mode=mode)["lock_mode"] == mode


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_replica_without_unsafe_modes_never_serves_one(make_app: Any) -> None:
    """An unsafe mode stored by a permissive replica is served as locked by a strict one."""
    permissive = make_app(allow_unsafe_modes=True).test_client()
    set_mode(permissive, lock_mode="unlocked")
    strict = make_app(allow_unsafe_modes=False).test_client()
    assert current_mode(strict)["lock_mode"] == "locked"
    response = strict.post("/accounts", json={"owner": "a", "opening_balance": 1})
    assert response.headers["X-Lock-Mode"] == "locked"
    assert journal(strict, response.get_json()["id"])[0]["lock_mode"] == "locked"


# --------------------------------------------------------------------------- PUT /mode: bodies


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["lock_mode"]),
        ({"lock_mode": "LOCKED"}, ["lock_mode"]),
        ({"lock_mode": "Locked"}, ["lock_mode"]),
        ({"lock_mode": " locked"}, ["lock_mode"]),
        ({"lock_mode": "process_lock"}, ["lock_mode"]),
        ({"lock_mode": "fast"}, ["lock_mode"]),
        ({"lock_mode": ""}, ["lock_mode"]),
        ({"lock_mode": None}, ["lock_mode"]),
        ({"lock_mode": 1}, ["lock_mode"]),
        ({"lock_mode": ["locked"]}, ["lock_mode"]),
        ({"race_window_ms": -1}, ["race_window_ms"]),
        ({"race_window_ms": 5001}, ["race_window_ms"]),
        ({"race_window_ms": 10**30}, ["race_window_ms"]),
        ({"race_window_ms": 1.5}, ["race_window_ms"]),
        ({"race_window_ms": 10.0}, ["race_window_ms"]),
        ({"race_window_ms": True}, ["race_window_ms"]),
        ({"race_window_ms": "10"}, ["race_window_ms"]),
        ({"race_window_ms": None}, ["race_window_ms"]),
        ({"lock_mode": "atomic", "race_window_ms": -1}, ["race_window_ms"]),
        ({"lock_mode": "atomic", "window": 5}, ["window"]),
        ({"mode": "atomic"}, ["mode"]),
    ],
)
def test_put_mode_bad_body_is_422_and_changes_nothing(
    shared_client: FlaskClient, body: dict[str, Any], fields: list[str]
) -> None:
    """Unknown modes, bad windows, unknown fields and an empty object are 422; nothing changes."""
    before = current_mode(shared_client)
    assert_validation(shared_client.put("/mode", json=body, headers=ADMIN_HEADERS), *fields)
    assert current_mode(shared_client) == before


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"", None, 415, "unsupported_media_type"),
        (b'{"lock_mode": "atomic"}', "text/plain", 415, "unsupported_media_type"),
        (b"", "application/json", 400, "malformed_json"),
        (b'{"lock_mode": ', "application/json", 400, "malformed_json"),
        (b'["atomic"]', "application/json", 400, "malformed_json"),
        (
            b'{"lock_mode": "atomic", "lock_mode": "unlocked"}',
            "application/json",
            400,
            "malformed_json",
        ),
    ],
)
def test_put_mode_unreadable_body_changes_nothing(
    shared_client: FlaskClient, data: bytes, content_type: str | None, status: int, code: str
) -> None:
    """A missing body, a non-JSON body or a non-object is refused before anything changes."""
    before = current_mode(shared_client)
    response = shared_client.put(
        "/mode", data=data, content_type=content_type, headers=ADMIN_HEADERS
    )
    assert_problem(response, status, code)
    assert current_mode(shared_client) == before


# --------------------------------------------------------------------------- PUT /mode: success


@pytest.fixture
def mode_client(shared_client: FlaskClient) -> Iterator[FlaskClient]:
    """The shared app's client, put back to locked with no race window after the test."""
    yield shared_client
    set_mode(shared_client, lock_mode="locked", race_window_ms=0)


def test_put_mode_changes_what_is_reported_and_served(mode_client: FlaskClient) -> None:
    """After PUT /mode, GET /mode, X-Lock-Mode and new journal entries all name the new mode."""
    account = open_account(mode_client, opening_balance=10)
    changed = set_mode(mode_client, lock_mode="optimistic")
    assert changed == {
        "lock_mode": "optimistic",
        "race_window_ms": 0,
        "modes": ALL_MODES,
        "unsafe_modes_allowed": True,
    }
    assert current_mode(mode_client) == changed
    response = mode_client.post(f"/accounts/{account['id']}/deposit", json={"amount": 1})
    assert response.headers["X-Lock-Mode"] == "optimistic"
    assert response.get_json()["lock_mode"] == "optimistic"
    assert [entry["lock_mode"] for entry in journal(mode_client, account["id"])] == [
        "optimistic",
        "locked",
    ]


def test_put_mode_fields_change_independently(mode_client: FlaskClient) -> None:
    """Changing only the window keeps the mode, changing only the mode keeps the window."""
    assert set_mode(mode_client, race_window_ms=3)["lock_mode"] == "locked"
    assert current_mode(mode_client)["race_window_ms"] == 3
    after_mode = set_mode(mode_client, lock_mode="atomic")
    assert (after_mode["lock_mode"], after_mode["race_window_ms"]) == ("atomic", 3)
    both = set_mode(mode_client, lock_mode="unlocked", race_window_ms=0)
    assert (both["lock_mode"], both["race_window_ms"]) == ("unlocked", 0)
    assert current_mode(mode_client) == both


def test_put_mode_window_bounds_are_accepted(mode_client: FlaskClient) -> None:
    """A race window of 0 and of 5000 ms are both accepted."""
    assert set_mode(mode_client, race_window_ms=5000)["race_window_ms"] == 5000
    assert set_mode(mode_client, race_window_ms=0)["race_window_ms"] == 0


def test_transfer_records_the_mode_that_served_it(mode_client: FlaskClient) -> None:
    """A transfer made after a mode change records the new mode on itself and both legs."""
    source = open_account(mode_client, opening_balance=10)["id"]
    target = open_account(mode_client)["id"]
    set_mode(mode_client, lock_mode="atomic")
    response = mode_client.post(
        "/transfers", json={"from_account": source, "to_account": target, "amount": 4}
    )
    transfer = response.get_json()
    assert response.headers["X-Lock-Mode"] == "atomic"
    assert transfer["lock_mode"] == "atomic"
    assert {leg["lock_mode"] for leg in transfer["legs"]} == {"atomic"}
    assert mode_client.get(f"/transfers/{transfer['id']}").get_json()["lock_mode"] == "atomic"


# --------------------------------------------------------------------------- every mode


@pytest.fixture(params=ALL_MODES)
def serving_mode(request: pytest.FixtureRequest, shared_client: FlaskClient) -> Iterator[str]:
    """Switch the shared app to the mode for one test, and back to locked after it."""
    mode = str(request.param)
    set_mode(shared_client, lock_mode=mode, race_window_ms=0)
    yield mode
    set_mode(shared_client, lock_mode="locked", race_window_ms=0)


def test_every_mode_gives_the_same_single_threaded_result(
    shared_client: FlaskClient, serving_mode: str
) -> None:
    """Deposit, withdrawal and transfer give the same balances, journal and audit in every mode."""
    source = open_account(shared_client, opening_balance=100)["id"]
    target = open_account(shared_client)["id"]
    deposited = shared_client.post(f"/accounts/{source}/deposit", json={"amount": 50})
    withdrawn = shared_client.post(f"/accounts/{source}/withdraw", json={"amount": 30})
    moved = shared_client.post(
        "/transfers", json={"from_account": source, "to_account": target, "amount": 20}
    )
    for response in (deposited, withdrawn, moved):
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.headers["X-Lock-Mode"] == serving_mode
        assert response.get_json()["lock_mode"] == serving_mode
    assert deposited.get_json()["balance_after"] == 150
    assert withdrawn.get_json()["balance_after"] == 120
    legs = {leg["kind"]: leg for leg in moved.get_json()["legs"]}
    assert (legs["transfer_out"]["balance_after"], legs["transfer_in"]["balance_after"]) == (
        100,
        20,
    )
    source_after = shared_client.get(f"/accounts/{source}").get_json()
    target_after = shared_client.get(f"/accounts/{target}").get_json()
    assert (source_after["balance"], source_after["version"]) == (100, 3)
    assert (target_after["balance"], target_after["version"]) == (20, 1)
    assert [entry["balance_after"] for entry in journal(shared_client, source)] == [
        100,
        120,
        150,
        100,
    ]
    for account_id in (source, target):
        assert shared_client.get(f"/accounts/{account_id}/audit").get_json()["consistent"] is True
    assert shared_client.get("/audit").get_json()["consistent"] is True


def test_every_mode_refuses_overdrafts_and_changes_nothing(
    shared_client: FlaskClient, serving_mode: str
) -> None:
    """A withdrawal or transfer beyond the balance is 409 in every mode; nothing changes."""
    source = open_account(shared_client, opening_balance=10)["id"]
    target = open_account(shared_client, opening_balance=5)["id"]
    before = snapshot(shared_client, source, target)
    withdrawn = shared_client.post(f"/accounts/{source}/withdraw", json={"amount": 11})
    moved = shared_client.post(
        "/transfers", json={"from_account": source, "to_account": target, "amount": 11}
    )
    for response in (withdrawn, moved):
        assert_problem(response, 409, "insufficient_funds")
        assert response.headers["X-Lock-Mode"] == serving_mode
    assert snapshot(shared_client, source, target) == before


def test_every_mode_refuses_passing_the_balance_limit_and_changes_nothing(
    shared_client: FlaskClient, serving_mode: str
) -> None:
    """A deposit or transfer past 2**53-1 is 409 in every mode; nothing changes."""
    full = open_account(shared_client, opening_balance=MAX_BALANCE_MINOR)["id"]
    source = open_account(shared_client, opening_balance=10)["id"]
    before = snapshot(shared_client, full, source)
    deposited = shared_client.post(f"/accounts/{full}/deposit", json={"amount": 1})
    moved = shared_client.post(
        "/transfers", json={"from_account": source, "to_account": full, "amount": 1}
    )
    for response in (deposited, moved):
        assert_problem(response, 409, "balance_limit_exceeded")
    assert snapshot(shared_client, full, source) == before


def test_every_mode_withdraws_to_exactly_zero(
    shared_client: FlaskClient, serving_mode: str
) -> None:
    """Withdrawing the whole balance reaches 0 in every mode; one more unit is refused."""
    account = open_account(shared_client, opening_balance=7)["id"]
    response = shared_client.post(f"/accounts/{account}/withdraw", json={"amount": 7})
    assert response.get_json()["balance_after"] == 0
    assert_problem(
        shared_client.post(f"/accounts/{account}/withdraw", json={"amount": 1}),
        409,
        "insufficient_funds",
    )
    assert shared_client.get(f"/accounts/{account}").get_json()["balance"] == 0
