"""The in-memory store's running audit: each account's books and the bank's totals.

Posted with every journal entry, so an audit is O(1) at any journal length
instead of a walk over the journal; the checks are those of
`service.domain.audit_account` (the journal sum, chain breaks, the lowest
running balance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.domain import Account, AccountAudit, BankAudit, Transaction


@dataclass
class Books:
    """One account's audit, kept up to date with every entry (see domain.audit_account)."""

    journal_balance: int = 0
    lowest_journal_balance: int = 0
    chain_breaks: int = 0
    last_balance_after: int = 0

    def audit(self, account: Account) -> AccountAudit:
        return AccountAudit(
            account.id,
            account.balance,
            self.journal_balance,
            self.chain_breaks,
            self.lowest_journal_balance,
        )


@dataclass
class BankTotals:
    total_balance: int = 0
    total_journal: int = 0
    chain_breaks: int = 0
    inconsistent: set[int] = field(default_factory=set)
    negative: set[int] = field(default_factory=set)

    def post(self, books: Books, entry: Transaction, account: Account) -> None:
        """Advance the account's books and these totals by one entry."""
        books.journal_balance += entry.signed_amount
        books.lowest_journal_balance = min(books.lowest_journal_balance, books.journal_balance)
        if entry.balance_after != books.last_balance_after + entry.signed_amount:
            books.chain_breaks += 1
            self.chain_breaks += 1
        books.last_balance_after = entry.balance_after
        self.total_journal += entry.signed_amount
        self._track(books.audit(account))

    def audit(self, accounts: int) -> BankAudit:
        return BankAudit(
            accounts=accounts,
            inconsistent_accounts=len(self.inconsistent),
            negative_accounts=len(self.negative),
            chain_breaks=self.chain_breaks,
            total_balance=self.total_balance,
            total_journal=self.total_journal,
        )

    def _track(self, audit: AccountAudit) -> None:
        for flagged, member in (
            (self.inconsistent, not audit.consistent),
            (self.negative, audit.went_negative),
        ):
            if member:
                flagged.add(audit.account_id)
            else:
                flagged.discard(audit.account_id)
