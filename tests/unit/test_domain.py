"""The domain rules of DESIGN section 1: amounts, owners, currencies, modes, balances, errors.

The audits are tests/unit/test_domain_audit.py.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api.bodies import Amount, ModeChange, NewAccount
from service.domain import (
    CONTROL_CATEGORIES,
    MAX_AMOUNT_MINOR,
    MAX_BALANCE_MINOR,
    MAX_RACE_WINDOW_MS,
    ORDINARY_WHITESPACE,
    OWNER_MAX_LENGTH,
    BalanceLimitExceeded,
    DomainError,
    FieldError,
    InsufficientFunds,
    LockMode,
    LockTimeout,
    StoreUnavailable,
    Unavailable,
    ValidationFailed,
    WriteConflict,
    check_new_balance,
    owner_error,
    rfc3339,
)
from tests.support.body_checks import field_error

# The rules of values a client sends are declared once, in the request bodies; these ask them
# one field at a time.
amount_error = partial(field_error, Amount, "amount")
opening_balance_error = partial(field_error, NewAccount, "opening_balance")
currency_error = partial(field_error, NewAccount, "currency")
race_window_error = partial(field_error, ModeChange, "race_window_ms")
lock_mode_error = partial(field_error, ModeChange, "lock_mode")

# Values that are not JSON integers, whatever Python thinks (bool is an int, 10.0 == 10).
NOT_INTEGERS: list[object] = [
    True,
    False,
    1.0,
    10.0,
    1e3,
    10.5,
    float("nan"),
    float("inf"),
    "10",
    "1e3",
    None,
    [10],
    {"amount": 10},
    b"10",
]


# --------------------------------------------------------------------------- amounts


@pytest.mark.parametrize("amount", [1, 2, 999, MAX_AMOUNT_MINOR - 1, MAX_AMOUNT_MINOR])
def test_amounts_in_range_are_valid(amount: int) -> None:
    """Integers from 1 to 10**12 inclusive are valid amounts."""
    assert amount_error(amount) is None


@pytest.mark.parametrize(
    "amount", [0, -1, -MAX_AMOUNT_MINOR, MAX_AMOUNT_MINOR + 1, 10**30, -(10**30), 2**64]
)
def test_amounts_out_of_range_are_refused(amount: int) -> None:
    """Zero, negatives, 10**12+1 and huge integers are refused with a range message."""
    message = amount_error(amount)
    assert message is not None
    assert "at least" in message or "at most" in message


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
def test_non_integer_amounts_are_refused(value: object) -> None:
    """Bools, floats (even 10.0 and 1e3), strings, None and containers are not amounts."""
    assert amount_error(value) == "must be an integer number of minor units"


@given(
    st.one_of(
        st.integers(),
        st.booleans(),
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.none(),
        st.decimals(allow_nan=False, allow_infinity=False),
    )
)
def test_amount_error_accepts_exactly_ints_in_range(value: object) -> None:
    """amount_error passes a value if and only if it is a real int (not bool) in [1, 10**12]."""
    accepted = type(value) is int and 1 <= value <= MAX_AMOUNT_MINOR
    assert (amount_error(value) is None) == accepted


# --------------------------------------------------------------------------- opening balance


@pytest.mark.parametrize("balance", [0, 1, MAX_BALANCE_MINOR])
def test_opening_balances_in_range_are_valid(balance: int) -> None:
    """Opening balances from 0 to 2**53-1 are valid."""
    assert opening_balance_error(balance) is None


@pytest.mark.parametrize("balance", [-1, MAX_BALANCE_MINOR + 1, 2**63, 10**30])
def test_opening_balances_out_of_range_are_refused(balance: int) -> None:
    """Negative opening balances and those above 2**53-1 are refused."""
    assert opening_balance_error(balance) is not None


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
def test_non_integer_opening_balances_are_refused(value: object) -> None:
    """Opening balances follow the same integer-only rule as amounts."""
    assert opening_balance_error(value) is not None


def test_balance_limit_is_the_javascript_safe_integer() -> None:
    """The balance limit is 2**53-1 and every amount fits below it."""
    assert MAX_BALANCE_MINOR == 9_007_199_254_740_991
    assert MAX_AMOUNT_MINOR < MAX_BALANCE_MINOR


# --------------------------------------------------------------------------- owner


@pytest.mark.parametrize(
    "owner",
    [
        "a",
        "alice",
        "Alice Smith-Jones",
        "a" * OWNER_MAX_LENGTH,
        "  " + "a" * OWNER_MAX_LENGTH + "  ",
        "\t alice \n",
        "Zoë Ł",
        "山田 太郎",
        "😀" * OWNER_MAX_LENGTH,
        "O'Brien & Co. (Ltd)",
        "e\u0301",  # combining accent (category Mn), not a control character
    ],
)
def test_valid_owners(owner: str) -> None:
    """Owners of 1 to 200 printable characters after trimming are valid."""
    assert owner_error(owner) is None


@pytest.mark.parametrize("owner", ["", " ", "   ", "\t\n", "\u3000"])
def test_empty_owner_after_trimming_is_refused(owner: str) -> None:
    """An owner that is empty once trimmed is refused."""
    assert owner_error(owner) == "must not be empty"


@pytest.mark.parametrize("owner", ["a" * (OWNER_MAX_LENGTH + 1), "😀" * (OWNER_MAX_LENGTH + 1)])
def test_owner_of_201_characters_is_refused(owner: str) -> None:
    """201 characters (not bytes) is one too many."""
    assert owner_error(owner) == f"must be at most {OWNER_MAX_LENGTH} characters"


@pytest.mark.parametrize(
    "character",
    [
        "\x00",  # NUL (Cc)
        "\n",  # line feed (Cc)
        "\r",  # carriage return (Cc)
        "\t",  # tab (Cc)
        "\x1b",  # escape (Cc): terminal escape sequences
        "\x7f",  # DEL (Cc)
        "\x85",  # next line (Cc)
        "\u200b",  # zero-width space (Cf)
        "\u200d",  # zero-width joiner (Cf)
        "\u202e",  # right-to-left override (Cf): spoofing
        "\ufeff",  # byte order mark (Cf)
        "\ud800",  # lone surrogate (Cs): not encodable as UTF-8
        "\ue000",  # private use (Co)
        "\u0378",  # unassigned (Cn)
    ],
    ids=lambda character: f"U+{ord(character):04X}",
)
def test_control_and_format_characters_inside_an_owner_are_refused(character: str) -> None:
    """Any Unicode category C character inside the owner is refused."""
    assert unicodedata.category(character).startswith("C")
    assert owner_error(f"al{character}ice") == "must not contain control characters"


@given(st.text(min_size=1, max_size=OWNER_MAX_LENGTH))
def test_owner_rule_is_unicode_category_c(owner: str) -> None:
    """A 1-200 char owner is valid exactly when, trimmed, it is non-empty with no category C.

    Only ordinary white space is trimmed before the check: str.strip() would
    also drop the separators \x1c-\x1f, which the rule refuses (and Zl/Zp).
    """
    checked = owner.strip(ORDINARY_WHITESPACE)
    expected_valid = bool(owner.strip()) and not any(
        unicodedata.category(character).startswith("C")
        or unicodedata.category(character) in CONTROL_CATEGORIES
        for character in checked
    )
    assert (owner_error(owner) is None) == expected_valid


@pytest.mark.parametrize("value", [None, 5, 5.0, True, ["alice"], {"name": "alice"}, b"alice"])
def test_non_string_owners_are_refused(value: object) -> None:
    """An owner must be a string."""
    assert owner_error(value) == "must be a string"


# --------------------------------------------------------------------------- currency


@pytest.mark.parametrize("currency", ["USD", "EUR", "JPY", "XAU", "AAA", "ZZZ"])
def test_three_uppercase_letters_are_a_currency(currency: str) -> None:
    """Any three ASCII uppercase letters form a currency code."""
    assert currency_error(currency) is None


@pytest.mark.parametrize(
    "currency",
    [
        "usd",
        "Usd",
        "US",
        "USDX",
        "",
        " USD",
        "USD ",
        "USD\n",
        "U5D",
        "ÄBC",
        "\uff35\uff33\uff24",  # fullwidth USD
        "U\u0301SD",
        None,
        840,
        ["USD"],
    ],
    ids=repr,
)
def test_bad_currencies_are_refused(currency: object) -> None:
    """Lowercase, wrong length, padded, non-ASCII and non-string currencies are refused."""
    assert currency_error(currency) is not None


# --------------------------------------------------------------------------- race window, modes


@pytest.mark.parametrize("window", [0, 1, 20, MAX_RACE_WINDOW_MS])
def test_race_windows_in_range_are_valid(window: int) -> None:
    """Race windows from 0 to 5000 ms are valid."""
    assert race_window_error(window) is None


@pytest.mark.parametrize(
    "window", [-1, MAX_RACE_WINDOW_MS + 1, 10**30, True, False, 1.0, 20.5, "20", None]
)
def test_bad_race_windows_are_refused(window: object) -> None:
    """Negative, too long, bool, float, string and null race windows are refused."""
    assert race_window_error(window) is not None


def test_lock_modes_are_the_seven_of_the_design() -> None:
    """The seven modes of DESIGN §2; three are unsafe, two keep their locks in Redis."""
    assert [mode.value for mode in LockMode] == [
        "unlocked",
        "locked",
        "process-lock",
        "optimistic",
        "atomic",
        "redis-lock",
        "fenced",
    ]
    assert {mode.value for mode in LockMode if mode.is_unsafe} == {
        "unlocked",
        "process-lock",
        "redis-lock",
    }
    assert {mode.value for mode in LockMode if mode.uses_redis} == {"redis-lock", "fenced"}


@pytest.mark.parametrize("name", [mode.value for mode in LockMode])
def test_every_lock_mode_name_is_valid(name: str) -> None:
    """Each mode's exact name passes lock_mode_error."""
    assert lock_mode_error(name) is None


@pytest.mark.parametrize(
    "name",
    ["LOCKED", "Locked", " locked", "locked ", "process_lock", "lock", "", None, 1, ["locked"]],
)
def test_other_lock_mode_names_are_refused(name: object) -> None:
    """Mode names are exact: no case folding, no trimming, no aliases, strings only."""
    message = lock_mode_error(name)
    assert message is not None
    assert all(mode.value in message for mode in LockMode)


# --------------------------------------------------------------------------- balances


@pytest.mark.parametrize(
    ("balance", "delta", "expected"),
    [
        (100, -100, 0),
        (100, -1, 99),
        (0, 5, 5),
        (MAX_BALANCE_MINOR - 1, 1, MAX_BALANCE_MINOR),
        (MAX_BALANCE_MINOR, -MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR - MAX_AMOUNT_MINOR),
    ],
)
def test_check_new_balance_allows_zero_up_to_the_limit(
    balance: int, delta: int, expected: int
) -> None:
    """A new balance from 0 to 2**53-1 inclusive is returned as is."""
    assert check_new_balance(balance, delta, 7) == expected


@pytest.mark.parametrize(("balance", "delta"), [(100, -101), (0, -1), (5, -MAX_AMOUNT_MINOR)])
def test_check_new_balance_refuses_overdrafts(balance: int, delta: int) -> None:
    """A balance below zero is InsufficientFunds naming the account."""
    with pytest.raises(InsufficientFunds, match="account 7") as raised:
        check_new_balance(balance, delta, 7)
    assert raised.value.code == "insufficient_funds"


@pytest.mark.parametrize(("balance", "delta"), [(MAX_BALANCE_MINOR, 1), (MAX_BALANCE_MINOR - 5, 6)])
def test_check_new_balance_refuses_passing_the_limit(balance: int, delta: int) -> None:
    """A balance above 2**53-1 is BalanceLimitExceeded naming the account."""
    with pytest.raises(BalanceLimitExceeded, match="account 7") as raised:
        check_new_balance(balance, delta, 7)
    assert raised.value.code == "balance_limit_exceeded"


# --------------------------------------------------------------------------- errors


def test_domain_errors_carry_stable_codes_and_retry_hints() -> None:
    """Refusals carry DESIGN's codes; the 503 ones say when to retry."""
    assert issubclass(LockTimeout, Unavailable)
    assert issubclass(WriteConflict, Unavailable)
    assert issubclass(StoreUnavailable, Unavailable)
    assert (LockTimeout.code, WriteConflict.code, StoreUnavailable.code) == (
        "lock_timeout",
        "write_conflict",
        "store_unavailable",
    )
    assert LockTimeout("x").retry_after_seconds >= 1
    assert StoreUnavailable("x").retry_after_seconds >= 1
    assert DomainError("why").detail == "why"


def test_validation_failed_lists_every_field() -> None:
    """ValidationFailed keeps each field error and names them all in its detail."""
    failure = ValidationFailed([FieldError("owner", "is required"), FieldError("x", "unknown")])
    assert failure.code == "validation_error"
    assert failure.errors == (FieldError("owner", "is required"), FieldError("x", "unknown"))
    assert failure.detail == "owner: is required; x: unknown"


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC), "2024-05-06T07:08:09.123456Z"),
        (dt.datetime(2024, 5, 6, 7, 8, 9), "2024-05-06T07:08:09.000000Z"),
        (
            dt.datetime(2024, 5, 6, 9, 8, 9, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-05-06T07:08:09.000001Z",
        ),
        (
            dt.datetime(2024, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-1))),
            "2025-01-01T00:30:00.000000Z",
        ),
    ],
)
def test_rfc3339_is_utc_with_z(moment: dt.datetime, expected: str) -> None:
    """Aware times are converted to UTC, naive ones are taken as UTC; both end with Z."""
    assert rfc3339(moment) == expected


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(9000, 1, 1),
        timezones=st.one_of(st.none(), st.timezones()),
    )
)
def test_rfc3339_round_trips_to_the_same_instant(moment: dt.datetime) -> None:
    """The text always ends with a single Z and parses back to the same instant."""
    text = rfc3339(moment)
    assert text.endswith("Z")
    assert "+" not in text
    assert text.count("Z") == 1
    parsed = dt.datetime.fromisoformat(text)
    expected = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
    assert parsed == expected.astimezone(dt.UTC)


@pytest.mark.parametrize("owner", ["\x1falice", "alice\x1c", "ali\u2028ce", "alice\u2029"])
def test_owner_refuses_separators_even_at_the_edges(owner: str) -> None:
    """Information and line separators are refused, not silently trimmed away."""
    assert owner_error(owner) == "must not contain control characters"
