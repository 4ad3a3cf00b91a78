"""The money rules: the bounds of amounts, balances, owners and race windows, what
an owner's name may hold, and what a balance may become.

The bounds are declared here and enforced on the way in by the request bodies
(service/api/bodies.py); `owner_error` is the one value rule JSON Schema
cannot state, so the bodies call it; `check_new_balance` is the one rule
every balance change obeys. Standard library only.
"""

from __future__ import annotations

import unicodedata

from service.domain.errors import BalanceLimitExceeded, InsufficientFunds

MIN_AMOUNT_MINOR = 1
MAX_AMOUNT_MINOR = 1_000_000_000_000
# Balances stay exactly representable as a JavaScript number.
MAX_BALANCE_MINOR = 2**53 - 1
OWNER_MAX_LENGTH = 200
DEFAULT_CURRENCY = "USD"
MAX_RACE_WINDOW_MS = 5000
CONTROL_CATEGORIES = frozenset({"Zl", "Zp"})
ORDINARY_WHITESPACE = " \t\n\r\x0b\x0c"


def owner_error(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    trimmed = value.strip()
    if not trimmed:
        return "must not be empty"
    if len(trimmed) > OWNER_MAX_LENGTH:
        return f"must be at most {OWNER_MAX_LENGTH} characters"
    # Ordinary edge whitespace is trimmed; str.strip() would also eat the
    # separators \x1c-\x1f, which must be refused, not silently dropped. Line
    # and paragraph separators (Zl, Zp) break a name across lines like \n.
    if any(
        unicodedata.category(character).startswith("C")
        or unicodedata.category(character) in CONTROL_CATEGORIES
        for character in value.strip(ORDINARY_WHITESPACE)
    ):
        return "must not contain control characters"
    return None


def check_new_balance(
    balance: int, delta: int, account_id: int, held: int = 0, reserve: int = 0
) -> int:
    """The balance after applying `delta`, or the domain refusal.

    A change that lowers the available money (`balance - held`; a debit, or
    a new hold whose amount is `reserve`) must be covered by it: held money
    is not there to spend. A change that raises it (a deposit, a capture or
    void that ends a hold) is never refused for holds.
    """
    new_balance = balance + delta
    if delta - reserve < 0 and new_balance - held - reserve < 0:
        if held == 0:
            raise InsufficientFunds(
                f"account {account_id} holds {balance}, which does not cover {reserve - delta}"
            )
        raise InsufficientFunds(
            f"account {account_id} has {balance - held} available "
            f"({held} of {balance} held), which does not cover {reserve - delta}"
        )
    if new_balance < 0:
        raise InsufficientFunds(
            f"account {account_id} holds {balance}, which does not cover {-delta}"
        )
    if new_balance > MAX_BALANCE_MINOR:
        raise BalanceLimitExceeded(
            f"account {account_id} would hold {new_balance}, over the limit {MAX_BALANCE_MINOR}"
        )
    return new_balance
