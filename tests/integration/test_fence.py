"""The fencing check of `fenced`, done by the store, the same on memory, SQLite and PostgreSQL.

A token is recorded on an account by `claim_states` only if it is above the
one the account holds; a write fenced with a token applies only while the
account still holds it. The interleavings a paused lock holder causes are
played here directly against the store, with no Redis: a late holder's
write changes nothing (StaleLock), a transfer is refused whole.
"""

from __future__ import annotations

import pytest

from service.domain import Leg, NotFound, StaleLock, TransactionKind
from service.stores.base import LegWrite, Store, TransferSpec


def deposit(
    account_id: int, amount: int, new_balance: int, fence: int, version: int = 0
) -> LegWrite:
    """A fenced deposit computed from a claim that read `version`."""
    return LegWrite(
        Leg(account_id, TransactionKind.DEPOSIT, amount),
        new_balance=new_balance,
        expected_version=version,
        fence=fence,
    )


def journal_length(store: Store, account_id: int) -> int:
    return len(store.list_transactions(account_id, None, 500))


def test_a_claimed_token_reads_and_then_writes(store: Store) -> None:
    """Claim with token 1, write with token 1: the balance, version and journal move."""
    account = store.open_account("a", "USD", 10, "fenced")
    states = store.claim_states({account.id: 1})
    assert (states[account.id].balance, states[account.id].version) == (10, 0)
    written = store.write_legs([deposit(account.id, 5, 15, fence=1)], "fenced")
    assert written.transactions[0].balance_after == 15
    assert (store.get_account(account.id).balance, journal_length(store, account.id)) == (15, 2)


@pytest.mark.parametrize("token", [3, 2])
def test_a_token_not_above_the_recorded_one_is_refused(store: Store, token: int) -> None:
    """An equal or older token cannot claim the account: StaleLock, nothing recorded."""
    account = store.open_account("a", "USD", 10, "fenced")
    store.claim_states({account.id: 3})
    with pytest.raises(StaleLock, match=f"account {account.id}") as refused:
        store.claim_states({account.id: token})
    assert refused.value.newer_token == 3
    # token 3 still holds the account: its write goes through
    store.write_legs([deposit(account.id, 1, 11, fence=3)], "fenced")
    assert store.get_account(account.id).balance == 11


def test_a_late_holder_cannot_overwrite_a_newer_one(store: Store) -> None:
    """Paused holder (token 1) read 10; newer holder (token 2) claimed and deposited 7;
    the late deposit of 5, computed from 10, is refused: the 7 is not lost."""
    account = store.open_account("a", "USD", 10, "fenced")
    late_read = store.claim_states({account.id: 1})[account.id].balance
    newer_read = store.claim_states({account.id: 2})[account.id].balance
    store.write_legs([deposit(account.id, 7, newer_read + 7, fence=2)], "fenced")
    with pytest.raises(StaleLock) as refused:
        store.write_legs([deposit(account.id, 5, late_read + 5, fence=1)], "fenced")
    assert refused.value.newer_token == 2
    account_now = store.get_account(account.id)
    assert (account_now.balance, account_now.version) == (17, 1)
    assert journal_length(store, account.id) == 2
    assert store.audit_account(account.id).consistent


def test_a_late_write_between_a_newer_read_and_write_is_refused(store: Store) -> None:
    """The interleaving a check on the write alone would miss: the newer holder has read but
    not yet written when the late one writes. The late write is refused; the newer one lands."""
    account = store.open_account("a", "USD", 10, "fenced")
    late_read = store.claim_states({account.id: 1})[account.id].balance
    newer_read = store.claim_states({account.id: 2})[account.id].balance
    with pytest.raises(StaleLock):
        store.write_legs([deposit(account.id, 5, late_read + 5, fence=1)], "fenced")
    store.write_legs([deposit(account.id, 7, newer_read + 7, fence=2)], "fenced")
    assert store.get_account(account.id).balance == 17
    assert store.audit_account(account.id).consistent


def test_a_transfer_with_one_stale_leg_writes_neither_leg(store: Store) -> None:
    """Both accounts claimed with token 1; account b then claimed by token 2: the transfer
    is refused whole -- no balance, no journal entry, no transfer row."""
    a = store.open_account("a", "USD", 100, "fenced")
    b = store.open_account("b", "USD", 0, "fenced")
    states = store.claim_states({a.id: 1, b.id: 1})
    store.claim_states({b.id: 2})
    legs = [
        LegWrite(
            Leg(a.id, TransactionKind.TRANSFER_OUT, 30),
            new_balance=states[a.id].balance - 30,
            expected_version=states[a.id].version,
            fence=1,
        ),
        LegWrite(
            Leg(b.id, TransactionKind.TRANSFER_IN, 30),
            new_balance=states[b.id].balance + 30,
            expected_version=states[b.id].version,
            fence=1,
        ),
    ]
    with pytest.raises(StaleLock, match=f"account {b.id}"):
        store.write_legs(legs, "fenced", TransferSpec(a.id, b.id, 30))
    assert (store.get_account(a.id).balance, store.get_account(b.id).balance) == (100, 0)
    assert (journal_length(store, a.id), journal_length(store, b.id)) == (1, 0)
    with pytest.raises(NotFound):
        store.get_transfer(1)
    assert store.audit_bank().consistent


def test_a_claim_of_two_accounts_is_all_or_nothing(store: Store) -> None:
    """If one account refuses the token, the other's claim is not recorded either."""
    a = store.open_account("a", "USD", 1, "fenced")
    b = store.open_account("b", "USD", 1, "fenced")
    store.claim_states({b.id: 5})
    with pytest.raises(StaleLock):
        store.claim_states({a.id: 4, b.id: 4})
    store.claim_states({a.id: 2})  # a still holds 0: an old token can still claim it


def test_a_claim_of_a_missing_account_is_not_found(store: Store) -> None:
    """Claiming an unknown account is NotFound, like any read."""
    with pytest.raises(NotFound):
        store.claim_states({999: 1})


def test_the_other_modes_ignore_the_fence_but_a_fenced_write_sees_their_writes(
    store: Store,
) -> None:
    """An atomic and a plain write between a claim and its write neither check nor move the
    fence -- but they move the version, so the fenced write computed before them is refused
    (a worker still serving another mode after a switch is not overwritten)."""
    account = store.open_account("a", "USD", 10, "fenced")
    claimed = store.claim_states({account.id: 4})[account.id]
    store.write_legs([LegWrite(Leg(account.id, TransactionKind.DEPOSIT, 1))], "atomic")
    store.write_legs(
        [LegWrite(Leg(account.id, TransactionKind.DEPOSIT, 1), new_balance=12)], "locked"
    )
    with pytest.raises(StaleLock, match="written by another request") as refused:
        store.write_legs(
            [deposit(account.id, 1, claimed.balance + 1, fence=4, version=claimed.version)],
            "fenced",
        )
    assert refused.value.newer_token == 4  # the token still holds: nothing for Redis to heal
    assert store.get_account(account.id).balance == 12
    with pytest.raises(StaleLock):  # token 4 is still the recorded one
        store.claim_states({account.id: 4})
    fresh = store.claim_states({account.id: 5})[account.id]
    assert (fresh.balance, fresh.version) == (12, 2)
    store.write_legs([deposit(account.id, 1, 13, fence=5, version=fresh.version)], "fenced")
    assert store.get_account(account.id).balance == 13
    assert store.audit_account(account.id).consistent


def test_a_fenced_write_without_the_version_it_read_is_a_programming_error() -> None:
    """LegWrite refuses a fence without the claim's version: the check cannot be skipped."""
    with pytest.raises(ValueError, match="version"):
        LegWrite(Leg(1, TransactionKind.DEPOSIT, 1), new_balance=2, fence=1)
