"""The money rules: what a valid amount, owner, currency, mode and race window are,
and what a balance may become.

Each `*_error` function says why a value is refused (or None), for the API
to report field by field; `check_new_balance` is the one rule every balance
change obeys. Standard library only.
"""

from __future__ import annotations

import re
import unicodedata

from service.domain.errors import BalanceLimitExceeded, InsufficientFunds
from service.domain.records import LockMode

MIN_AMOUNT_MINOR = 1
MAX_AMOUNT_MINOR = 1_000_000_000_000
# Balances stay exactly representable as a JavaScript number.
MAX_BALANCE_MINOR = 2**53 - 1
OWNER_MAX_LENGTH = 200
DEFAULT_CURRENCY = "USD"
MAX_RACE_WINDOW_MS = 5000
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
CONTROL_CATEGORIES = frozenset({"Zl", "Zp"})
ORDINARY_WHITESPACE = " \t\n\r\x0b\x0c"


def integer_error(value: object, minimum: int, maximum: int) -> str | None:
    """Why `value` is not a JSON integer in [minimum, maximum], or None.

    bool is an int subclass in Python, so it is excluded by name; floats are
    refused even when whole (1e3), since money never travels as a binary
    fraction.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer number of minor units"
    if value < minimum:
        return f"must be at least {minimum}"
    if value > maximum:
        return f"must be at most {maximum}"
    return None


def amount_error(value: object) -> str | None:
    return integer_error(value, MIN_AMOUNT_MINOR, MAX_AMOUNT_MINOR)


def opening_balance_error(value: object) -> str | None:
    return integer_error(value, 0, MAX_BALANCE_MINOR)


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


def currency_error(value: object) -> str | None:
    if not isinstance(value, str) or not CURRENCY_PATTERN.fullmatch(value):
        return "must be three uppercase letters (ISO 4217 style)"
    return None


def race_window_error(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer number of milliseconds"
    if not 0 <= value <= MAX_RACE_WINDOW_MS:
        return f"must be between 0 and {MAX_RACE_WINDOW_MS}"
    return None


def lock_mode_error(value: object) -> str | None:
    if not isinstance(value, str) or value not in {mode.value for mode in LockMode}:
        return "must be one of " + ", ".join(mode.value for mode in LockMode)
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
