"""How an audit judges a journal: one account's books, and the bank's totals.

The reference the stores' own audits are tested against (the in-memory
running books, the SQL window functions of `service.stores.sql_audit`).
Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from service.domain.holds import HoldAudit
from service.domain.records import Transaction


@dataclass(frozen=True)
class AccountAudit:
    account_id: int
    balance: int
    journal_balance: int
    chain_breaks: int
    lowest_journal_balance: int
    holds: HoldAudit = field(default_factory=HoldAudit)

    @property
    def drift(self) -> int:
        return self.balance - self.journal_balance

    @property
    def consistent(self) -> bool:
        return (
            self.drift == 0
            and self.chain_breaks == 0
            and self.lowest_journal_balance >= 0
            and self.balance >= 0
            and self.holds.anomalies == 0
        )

    @property
    def went_negative(self) -> bool:
        return self.balance < 0 or self.lowest_journal_balance < 0


def audit_account(account_id: int, balance: int, journal: Iterable[Transaction]) -> AccountAudit:
    """Judge one account's journal (in id order) against its stored balance.

    The journal sum is what the balance should be if no update was lost; the
    chain (each `balance_after` = previous `balance_after` ± amount) catches
    anomalies that cancel out in a sum; a journal sum that dips below zero is
    an acknowledged overdraft even when the stored balance looks fine.
    """
    running = 0
    lowest = 0
    breaks = 0
    previous_after = 0
    for entry in journal:
        running += entry.signed_amount
        lowest = min(lowest, running)
        if entry.balance_after != previous_after + entry.signed_amount:
            breaks += 1
        previous_after = entry.balance_after
    return AccountAudit(account_id, balance, running, breaks, lowest)


@dataclass(frozen=True)
class BankAudit:
    accounts: int
    inconsistent_accounts: int
    negative_accounts: int
    chain_breaks: int
    total_balance: int
    total_journal: int
    per_account: tuple[AccountAudit, ...] = field(default=(), repr=False)
    holds: HoldAudit = field(default_factory=HoldAudit)

    @property
    def drift(self) -> int:
        return self.total_balance - self.total_journal

    @property
    def consistent(self) -> bool:
        return self.inconsistent_accounts == 0 and self.drift == 0 and self.holds.anomalies == 0


def audit_bank(audits: Iterable[AccountAudit]) -> BankAudit:
    collected = tuple(audits)
    return BankAudit(
        accounts=len(collected),
        inconsistent_accounts=sum(1 for audit in collected if not audit.consistent),
        negative_accounts=sum(1 for audit in collected if audit.went_negative),
        chain_breaks=sum(audit.chain_breaks for audit in collected),
        total_balance=sum(audit.balance for audit in collected),
        total_journal=sum(audit.journal_balance for audit in collected),
        per_account=collected,
    )
