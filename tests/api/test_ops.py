"""Operations endpoints: liveness, readiness, and the bank-wide audit (which sees lost updates)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, text

from service import create_app
from service.domain import Leg, TransactionKind
from service.stores.base import LegWrite, Store
from tests.api.helpers import assert_problem, open_account
from tests.conftest import SQL_BACKENDS, make_config

AUDIT_FIELDS = {
    "accounts",
    "inconsistent_accounts",
    "negative_accounts",
    "chain_breaks",
    "total_balance",
    "total_journal",
    "drift",
    "total_held",
    "overcommitted_accounts",
    "holds_with_two_outcomes",
    "holds_captured_above_amount",
    "holds_captured_after_expiry",
    "consistent",
}
# What an audit of a bank without holds adds (tests/api/test_holds.py covers the rest).
NO_HOLDS = {
    "total_held": 0,
    "overcommitted_accounts": 0,
    "holds_with_two_outcomes": 0,
    "holds_captured_above_amount": 0,
    "holds_captured_after_expiry": 0,
}


def bank_store(app: Flask) -> Store:
    store: Store = app.extensions["bankrace"].store
    return store


def write_from_stale_read(
    store: Store, account_id: int, kind: TransactionKind, amount: int
) -> None:
    """Half of a race, by hand: write a balance computed from a read another write overtook."""
    stale = store.read_states([account_id])[account_id]
    new_balance = stale.balance + Leg(account_id, kind, amount).delta
    store.write_legs([LegWrite(Leg(account_id, kind, amount), new_balance=new_balance)], "unlocked")


def lose_an_update(store: Store, account_id: int, first: int, second: int) -> None:
    """Two deposits computed from the same read both land: the first one is overwritten."""
    stale = store.read_states([account_id])[account_id]
    for amount in (first, second):
        leg = Leg(account_id, TransactionKind.DEPOSIT, amount)
        store.write_legs([LegWrite(leg, new_balance=stale.balance + amount)], "unlocked")


# --------------------------------------------------------------------------- liveness, readiness


def test_healthz(shared_client: FlaskClient) -> None:
    """GET /healthz answers 200 {"status": "ok"}."""
    response = shared_client.get("/healthz")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}
    assert response.headers["X-Request-ID"]


def test_readyz_on_a_migrated_store(shared_client: FlaskClient) -> None:
    """GET /readyz answers 200 {"status": "ready"} when the store is reachable and current."""
    response = shared_client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


@pytest.fixture
def schema_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_readyz_on_a_schema_behind_the_code_is_503(
    client: FlaskClient, database_url: str, schema_engine: Engine
) -> None:
    """A schema at another revision than the code expects makes /readyz 503 store_unavailable."""
    with schema_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000_stale'"))
    response = client.get("/readyz")
    body = assert_problem(response, 503, "store_unavailable")
    assert response.headers["Retry-After"] == "5"
    assert "bankrace db upgrade" in body["detail"] or "revision" in body["detail"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_readyz_without_alembic_version_is_503(
    client: FlaskClient, database_url: str, schema_engine: Engine
) -> None:
    """A database whose migration record is gone is not ready: 503 with Retry-After."""
    with schema_engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
    response = client.get("/readyz")
    assert_problem(response, 503, "store_unavailable")
    assert response.headers["Retry-After"] == "5"


def test_readyz_on_a_never_migrated_sqlite_file_is_503(tmp_path: Path) -> None:
    """An app on an empty SQLite file starts; /readyz and the data endpoints answer 503."""
    empty = tmp_path / "empty.db"
    empty.touch()
    application = create_app(make_config(f"sqlite:///{empty}"))
    try:
        client = application.test_client()
        response = client.get("/readyz")
        body = assert_problem(response, 503, "store_unavailable")
        assert "migrat" in body["detail"]
        assert response.headers["Retry-After"] == "5"
        assert client.get("/healthz").status_code == 200
        for response in (
            client.get("/accounts"),
            client.get("/audit"),
            client.post("/accounts", json={"owner": "alice"}),
        ):
            assert_problem(response, 503, "store_unavailable")
            assert response.headers["Retry-After"] == "5"
    finally:
        bank_store(application).close()


# --------------------------------------------------------------------------- audit


def test_audit_of_an_empty_bank(client: FlaskClient) -> None:
    """GET /audit of a bank with no accounts: all zeros and consistent."""
    response = client.get("/audit")
    assert response.status_code == 200
    assert response.get_json() == {
        "accounts": 0,
        "inconsistent_accounts": 0,
        "negative_accounts": 0,
        "chain_breaks": 0,
        "total_balance": 0,
        "total_journal": 0,
        "drift": 0,
        "consistent": True,
        **NO_HOLDS,
    }


def test_audit_totals_follow_served_operations(client: FlaskClient) -> None:
    """Deposits and withdrawals move the totals; transfers do not; the bank stays consistent."""
    first = open_account(client, opening_balance=100)["id"]
    second = open_account(client, opening_balance=50)["id"]
    open_account(client)
    client.post(f"/accounts/{first}/deposit", json={"amount": 7})
    client.post(f"/accounts/{second}/withdraw", json={"amount": 20})
    client.post("/transfers", json={"from_account": first, "to_account": second, "amount": 30})
    audit = client.get("/audit").get_json()
    assert set(audit) == AUDIT_FIELDS
    assert audit == {
        "accounts": 3,
        "inconsistent_accounts": 0,
        "negative_accounts": 0,
        "chain_breaks": 0,
        "total_balance": 137,
        "total_journal": 137,
        "drift": 0,
        "consistent": True,
        **NO_HOLDS,
    }


def test_audit_sees_a_lost_update(app: Flask, client: FlaskClient) -> None:
    """Two writes from one stale read lose money; both audits show the drift and the chain break."""
    victim = open_account(client, opening_balance=100)["id"]
    bystander = open_account(client, opening_balance=5)["id"]
    lose_an_update(bank_store(app), victim, 10, 20)
    account_audit = client.get(f"/accounts/{victim}/audit").get_json()
    assert account_audit == {
        "account_id": victim,
        "balance": 120,
        "journal_balance": 130,
        "drift": -10,
        "chain_breaks": 1,
        "lowest_journal_balance": 0,
        "held": 0,
        "available": 120,
        "holds_with_two_outcomes": 0,
        "holds_captured_above_amount": 0,
        "holds_captured_after_expiry": 0,
        "consistent": False,
    }
    assert client.get(f"/accounts/{bystander}/audit").get_json()["consistent"] is True
    assert client.get("/audit").get_json() == {
        "accounts": 2,
        "inconsistent_accounts": 1,
        "negative_accounts": 0,
        "chain_breaks": 1,
        "total_balance": 125,
        "total_journal": 135,
        "drift": -10,
        "consistent": False,
        **NO_HOLDS,
    }


def test_audit_sees_lost_updates_that_cancel_out(app: Flask, client: FlaskClient) -> None:
    """A lost deposit and a lost withdrawal of one amount leave no drift but break the chain."""
    account = open_account(client, opening_balance=100)["id"]
    store = bank_store(app)
    # deposit 10 and withdraw 10 both read 100: the deposit is lost (balance 90) ...
    stale = store.read_states([account])[account]
    for kind, new_balance in ((TransactionKind.DEPOSIT, 110), (TransactionKind.WITHDRAWAL, 90)):
        leg = Leg(account, kind, 10)
        assert new_balance == stale.balance + leg.delta
        store.write_legs([LegWrite(leg, new_balance=new_balance)], "unlocked")
    # ... then withdraw 10 and deposit 10 both read 90: the withdrawal is lost (balance 100).
    stale = store.read_states([account])[account]
    for kind in (TransactionKind.WITHDRAWAL, TransactionKind.DEPOSIT):
        leg = Leg(account, kind, 10)
        store.write_legs([LegWrite(leg, new_balance=stale.balance + leg.delta)], "unlocked")
    account_audit = client.get(f"/accounts/{account}/audit").get_json()
    assert (account_audit["balance"], account_audit["journal_balance"]) == (100, 100)
    assert (account_audit["drift"], account_audit["chain_breaks"]) == (0, 2)
    assert account_audit["consistent"] is False
    bank = client.get("/audit").get_json()
    assert (bank["drift"], bank["chain_breaks"], bank["inconsistent_accounts"]) == (0, 2, 1)
    assert bank["consistent"] is False


def test_single_stale_write_alone_is_not_a_lost_update(app: Flask, client: FlaskClient) -> None:
    """A write from a read nobody overtook is an ordinary update: the audit stays consistent."""
    account = open_account(client, opening_balance=100)["id"]
    write_from_stale_read(bank_store(app), account, TransactionKind.WITHDRAWAL, 40)
    assert client.get(f"/accounts/{account}").get_json()["balance"] == 60
    assert client.get(f"/accounts/{account}/audit").get_json()["consistent"] is True
    assert client.get("/audit").get_json()["consistent"] is True
