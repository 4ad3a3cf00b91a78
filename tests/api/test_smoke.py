"""The app answers on every backend: open an account, deposit, read it back."""

from flask.testing import FlaskClient


def test_open_deposit_read(client: FlaskClient) -> None:
    opened = client.post("/accounts", json={"owner": "alice", "opening_balance": 100})
    assert opened.status_code == 201
    account_id = opened.get_json()["id"]
    deposited = client.post(f"/accounts/{account_id}/deposit", json={"amount": 50})
    assert deposited.status_code == 201, deposited.get_json()
    assert deposited.get_json()["balance_after"] == 150
    assert client.get(f"/accounts/{account_id}").get_json()["balance"] == 150
    assert client.get("/audit").get_json()["consistent"] is True
