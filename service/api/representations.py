"""JSON shapes of accounts, transactions, transfers and audits (DESIGN §3)."""

from __future__ import annotations

from typing import Any

from service.domain import (
    Account,
    AccountAudit,
    BankAudit,
    Transaction,
    TransactionKind,
    Transfer,
    rfc3339,
)


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "owner": account.owner,
        "currency": account.currency,
        "balance": account.balance,
        "version": account.version,
        "created_at": rfc3339(account.created_at),
        "updated_at": rfc3339(account.updated_at),
    }


def balance_json(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.id,
        "balance": account.balance,
        "currency": account.currency,
        "version": account.version,
    }


def transaction_json(entry: Transaction) -> dict[str, Any]:
    return {
        "id": entry.id,
        "account_id": entry.account_id,
        "kind": entry.kind.value,
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "transfer_id": entry.transfer_id,
        "lock_mode": entry.lock_mode,
        "created_at": rfc3339(entry.created_at),
    }


def transfer_json(transfer: Transfer) -> dict[str, Any]:
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


def account_audit_json(audit: AccountAudit) -> dict[str, Any]:
    return {
        "account_id": audit.account_id,
        "balance": audit.balance,
        "journal_balance": audit.journal_balance,
        "drift": audit.drift,
        "chain_breaks": audit.chain_breaks,
        "lowest_journal_balance": audit.lowest_journal_balance,
        "consistent": audit.consistent,
    }


def bank_audit_json(audit: BankAudit) -> dict[str, Any]:
    return {
        "accounts": audit.accounts,
        "inconsistent_accounts": audit.inconsistent_accounts,
        "negative_accounts": audit.negative_accounts,
        "chain_breaks": audit.chain_breaks,
        "total_balance": audit.total_balance,
        "total_journal": audit.total_journal,
        "drift": audit.drift,
        "consistent": audit.consistent,
    }
