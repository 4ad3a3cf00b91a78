"""The JSON answers (DESIGN §3), each declared once: a TypedDict, and the function filling it.

mypy holds each function to its declaration (a missing, extra or mistyped
key fails the type check), and the OpenAPI document takes its response
schemas from the same declarations (service/api/openapi.py; a class's
docstring is its description there); tests/api/test_openapi.py checks real
responses against them. Plain dicts at run time: nothing is validated or
copied on the way out.
"""

from __future__ import annotations

from typing import (
    Annotated,
    Literal,
    NotRequired,  # pydantic needs these before 3.12
)

from pydantic import Field
from typing_extensions import TypedDict

from service import domain
from service.api.bodies import MAX_ID
from service.domain import HoldStatus, LockMode, TransactionKind, rfc3339

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Timestamp = Annotated[
    str, Field(description="RFC 3339, UTC, `Z`", json_schema_extra={"format": "date-time"})
]
Currency = Annotated[str, Field(pattern="^[A-Z]{3}$")]
MinorUnits = Annotated[int, Field(description="minor units")]
Version = Annotated[
    int,
    Field(description="+1 on every balance change, and on every hold placed, captured or voided"),
]
PositiveAmount = Annotated[int, Field(ge=1)]
NextPage = Annotated[
    str | None,
    Field(description="the next page's URL (path and query), null on the last page"),
]


class Account(TypedDict):
    id: Id
    owner: str
    currency: Currency
    balance: MinorUnits
    held: Annotated[int, Field(description="the sum of the pending holds not yet expired")]
    available: Annotated[int, Field(description="balance - held: what may be spent or held")]
    version: Version
    created_at: Timestamp
    updated_at: Timestamp


class Balance(TypedDict):
    account_id: Id
    balance: MinorUnits
    currency: Currency
    version: Version


class Balances(TypedDict):
    """The accounts asked for, in the order asked, all read in one transaction."""

    items: list[Balance]


class Transaction(TypedDict):
    """One journal entry."""

    id: Id
    account_id: Id
    kind: TransactionKind
    amount: PositiveAmount
    balance_after: Annotated[int, Field(description="the balance this operation wrote")]
    transfer_id: int | None
    lock_mode: Annotated[str, Field(description="the mode that served it")]
    created_at: Timestamp
    hold_id: NotRequired[Annotated[int, Field(description="`capture` only: the hold it ended")]]


class Hold(TypedDict):
    """Money reserved on an account until captured, voided or expired (DESIGN §3 "Holds")."""

    id: Id
    account_id: Id
    amount: PositiveAmount
    status: Annotated[
        HoldStatus,
        Field(description="changes once, from pending; `expired` from `expires_at` on"),
    ]
    captured_amount: Annotated[int | None, Field(description="null unless captured")]
    expires_at: Timestamp
    created_at: Timestamp
    updated_at: Timestamp


class HoldPage(TypedDict):
    items: list[Hold]
    next: NextPage


class Transfer(TypedDict):
    id: Id
    from_account: Id
    to_account: Id
    amount: PositiveAmount
    lock_mode: str
    created_at: Timestamp
    legs: Annotated[
        list[Transaction],
        Field(min_length=2, max_length=2, description="transfer_out, then transfer_in"),
    ]


class AccountPage(TypedDict):
    items: list[Account]
    next: NextPage


class TransactionPage(TypedDict):
    items: list[Transaction]
    next: NextPage


class AccountAudit(TypedDict):
    account_id: Id
    balance: int
    journal_balance: Annotated[int, Field(description="the sum of the journal")]
    drift: Annotated[int, Field(description="balance - journal_balance: lost updates")]
    chain_breaks: Annotated[int, Field(description="entries not following the previous one")]
    lowest_journal_balance: int
    held: Annotated[int, Field(description="the sum of the pending holds not yet expired")]
    available: Annotated[int, Field(description="balance - held; below 0 is an anomaly")]
    holds_with_two_outcomes: Annotated[
        int, Field(description="holds captured twice, or captured and voided or expired")
    ]
    holds_captured_above_amount: int
    holds_captured_after_expiry: int
    consistent: bool


class BankAudit(TypedDict):
    accounts: int
    inconsistent_accounts: int
    negative_accounts: int
    chain_breaks: int
    total_balance: int
    total_journal: int
    drift: int
    total_held: int
    overcommitted_accounts: Annotated[int, Field(description="accounts with held > balance")]
    holds_with_two_outcomes: int
    holds_captured_above_amount: int
    holds_captured_after_expiry: int
    consistent: bool


class Mode(TypedDict):
    lock_mode: LockMode
    race_window_ms: int
    modes: list[LockMode]
    unsafe_modes_allowed: bool


class Status(TypedDict):
    status: Literal["ok"]


class Readiness(TypedDict):
    status: Literal["ready"]
    lock_service: NotRequired[
        Annotated[
            Literal["redis"],
            Field(
                description="present when the lock mode keeps its locks in Redis "
                "(`redis-lock`, `fenced`): Redis answered too"
            ),
        ]
    ]


def account_json(account: domain.Account) -> Account:
    return {
        "id": account.id,
        "owner": account.owner,
        "currency": account.currency,
        "balance": account.balance,
        "held": account.held,
        "available": account.available,
        "version": account.version,
        "created_at": rfc3339(account.created_at),
        "updated_at": rfc3339(account.updated_at),
    }


def balance_json(account: domain.Account) -> Balance:
    return {
        "account_id": account.id,
        "balance": account.balance,
        "currency": account.currency,
        "version": account.version,
    }


def transaction_json(entry: domain.Transaction) -> Transaction:
    answer: Transaction = {
        "id": entry.id,
        "account_id": entry.account_id,
        "kind": entry.kind,  # a StrEnum: JSON writes its value
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "transfer_id": entry.transfer_id,
        "lock_mode": entry.lock_mode,
        "created_at": rfc3339(entry.created_at),
    }
    if entry.hold_id is not None:
        answer["hold_id"] = entry.hold_id
    return answer


def hold_json(hold: domain.Hold) -> Hold:
    return {
        "id": hold.id,
        "account_id": hold.account_id,
        "amount": hold.amount,
        "status": hold.status,  # a StrEnum: JSON writes its value
        "captured_amount": hold.captured_amount,
        "expires_at": rfc3339(hold.expires_at),
        "created_at": rfc3339(hold.created_at),
        "updated_at": rfc3339(hold.updated_at),
    }


def transfer_json(transfer: domain.Transfer) -> Transfer:
    return {
        "id": transfer.id,
        "from_account": transfer.from_account,
        "to_account": transfer.to_account,
        "amount": transfer.amount,
        "lock_mode": transfer.lock_mode,
        "created_at": rfc3339(transfer.created_at),
        # Out, then in: a stable order for clients, whatever order the rows were written in.
        "legs": [
            transaction_json(leg)
            for leg in sorted(
                transfer.legs, key=lambda leg: leg.kind != TransactionKind.TRANSFER_OUT
            )
        ],
    }


def account_audit_json(audit: domain.AccountAudit) -> AccountAudit:
    return {
        "account_id": audit.account_id,
        "balance": audit.balance,
        "journal_balance": audit.journal_balance,
        "drift": audit.drift,
        "chain_breaks": audit.chain_breaks,
        "lowest_journal_balance": audit.lowest_journal_balance,
        "held": audit.holds.held,
        "available": audit.balance - audit.holds.held,
        "holds_with_two_outcomes": audit.holds.two_outcomes,
        "holds_captured_above_amount": audit.holds.captured_above_amount,
        "holds_captured_after_expiry": audit.holds.captured_after_expiry,
        "consistent": audit.consistent,
    }


def bank_audit_json(audit: domain.BankAudit) -> BankAudit:
    return {
        "accounts": audit.accounts,
        "inconsistent_accounts": audit.inconsistent_accounts,
        "negative_accounts": audit.negative_accounts,
        "chain_breaks": audit.chain_breaks,
        "total_balance": audit.total_balance,
        "total_journal": audit.total_journal,
        "drift": audit.drift,
        "total_held": audit.holds.held,
        "overcommitted_accounts": audit.holds.overcommitted_accounts,
        "holds_with_two_outcomes": audit.holds.two_outcomes,
        "holds_captured_above_amount": audit.holds.captured_above_amount,
        "holds_captured_after_expiry": audit.holds.captured_after_expiry,
        "consistent": audit.consistent,
    }
