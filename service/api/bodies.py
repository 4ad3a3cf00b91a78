"""The JSON bodies the API takes, each declared once: a pydantic model in strict mode.

A model validates the object `parsing.json_object` parsed (media type, size,
UTF-8, duplicate keys and NaN are decided there), and the OpenAPI document
takes its request schema from the same model (service/api/openapi.py): the
document cannot name a field the service refuses, or miss one it takes.

Strict means what money needs: 10.0, 1e3, "10", true and null are not
integers; an unknown field is refused; every bad field is named at once, in
the words of DESIGN §3 (`Refusal` gives each field its wording, `validated`
turns pydantic's errors into them). Where JSON Schema cannot say as much as
the check (`10.0` is an integer to JSON Schema, not to this service; Unicode
control characters in an owner), the field's description says it;
tests/api/test_openapi.py checks that check and schema agree on every other
kind of value.

Nothing here reads a request or knows Flask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import MISSING, AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from service.domain import (
    DEFAULT_CURRENCY,
    MAX_AMOUNT_MINOR,
    MAX_BALANCE_MINOR,
    MAX_RACE_WINDOW_MS,
    MIN_AMOUNT_MINOR,
    OWNER_MAX_LENGTH,
    FieldError,
    LockMode,
    ValidationFailed,
    owner_error,
)

# Ids beyond 18 digits cannot exist (BIGINT) and are answered 404/422 early.
MAX_ID_DIGITS = 18
# Bounding ids in a body keeps a huge JSON integer from reaching the
# database (BIGINT overflow would be a 500).
MAX_ID = 10**MAX_ID_DIGITS - 1
INTEGER_ONLY = "a JSON integer: 10.0, 1e3, strings and booleans are refused"
MINOR_UNITS = "must be an integer number of minor units"
# Pydantic's error types that mean "a number outside the field's bounds".
BOUND_ERRORS = frozenset({"greater_than_equal", "less_than_equal"})
REFUSED = "refused"

Body = TypeVar("Body", bound="RequestBody")


@dataclass(frozen=True)
class Refusal:
    """How a field's refusals read: `wrong` for a value of the wrong kind or
    form, `out_of_range` for a number past its bounds (by default "must be at
    least N" or "must be at most N", from the bounds themselves)."""

    wrong: str
    out_of_range: str = ""

    def message(self, error: ErrorDetails) -> str:
        if error["type"] == REFUSED:
            return error["msg"]
        if error["type"] not in BOUND_ERRORS:
            return self.wrong
        if self.out_of_range:
            return self.out_of_range
        context = error.get("ctx", {})
        if "ge" in context:
            return f"must be at least {context['ge']}"
        return f"must be at most {context['le']}"


def checked_by(rule: Callable[[str], str | None]) -> AfterValidator:
    """A domain rule that JSON Schema cannot state, run after the type check."""

    def check(value: str) -> str:
        message = rule(value)
        if message is not None:
            raise PydanticCustomError(REFUSED, message)
        return value

    return AfterValidator(check)


def _schema_of_body(schema: dict[str, Any], model: type[Any]) -> None:
    if model.when_empty:
        schema["minProperties"] = 1


class RequestBody(BaseModel):
    """A JSON object body: its declared fields and no other."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, json_schema_extra=_schema_of_body
    )
    #: Set when every field is optional but an empty object is refused (PUT /mode):
    #: the message of that refusal, given on the first field.
    when_empty: ClassVar[str] = ""


def validated(body: Mapping[str, Any], model: type[Body]) -> Body:
    """The body as `model` if every field passes; else ValidationFailed naming each bad field.

    Unknown fields come first, then missing ones, then bad values, each in
    the order given (unknown) or declared (the others).
    """
    try:
        value = model.model_validate(body)
    except ValidationError as failure:
        errors = sorted(failure.errors(include_url=False, include_input=False), key=_error_rank)
        refusals = _refusals(model)
        raise ValidationFailed(
            [FieldError(str(error["loc"][0]), _message(error, refusals)) for error in errors]
        ) from None
    if not body and model.when_empty:
        raise ValidationFailed([FieldError(next(iter(model.model_fields)), model.when_empty)])
    return value


def _error_rank(error: ErrorDetails) -> int:
    return {"extra_forbidden": 0, "missing": 1}.get(error["type"], 2)


def _message(error: ErrorDetails, refusals: Mapping[str, Refusal]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "is required"
    return refusals[str(error["loc"][0])].message(error)


@cache
def _refusals(model: type[RequestBody]) -> dict[str, Refusal]:
    return {
        name: next(item for item in info.metadata if isinstance(item, Refusal))
        for name, info in model.model_fields.items()
    }


# --------------------------------------------------------------------------- the bodies


AmountMinor = Annotated[
    int,
    Field(
        ge=MIN_AMOUNT_MINOR,
        le=MAX_AMOUNT_MINOR,
        description=f"minor units (cents); {INTEGER_ONLY}",
        examples=[50],
    ),
    Refusal(MINOR_UNITS),
]
AccountId = Annotated[
    int,
    Field(ge=1, le=MAX_ID, description=f"an account id; {INTEGER_ONLY}"),
    Refusal(
        "must be a positive integer account id",
        f"must be a positive integer account id, at most {MAX_ID}",
    ),
]


class Amount(RequestBody):
    """A deposit or a withdrawal."""

    amount: AmountMinor


class NewTransfer(RequestBody):
    """The two accounts differ and hold the same currency."""

    from_account: AccountId
    to_account: AccountId
    amount: AmountMinor


class NewAccount(RequestBody):
    """An account to open."""

    owner: Annotated[
        str,
        Field(
            # What the rule takes, as far as JSON Schema can say it.
            json_schema_extra={"minLength": 1, "maxLength": OWNER_MAX_LENGTH, "pattern": r"\S"},
            description=f"1 to {OWNER_MAX_LENGTH} characters once edge white space is trimmed "
            "(it is trimmed); no control characters (Unicode category C) and no line or "
            "paragraph separators",
            examples=["alice"],
        ),
        checked_by(owner_error),
        Refusal("must be a string"),
    ]
    currency: Annotated[
        str,
        Field(pattern="^[A-Z]{3}$", description="three uppercase letters, ISO 4217 style"),
        Refusal("must be three uppercase letters (ISO 4217 style)"),
    ] = DEFAULT_CURRENCY
    opening_balance: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_BALANCE_MINOR,
            description=f"minor units; {INTEGER_ONLY}. An `open` journal entry records it",
        ),
        Refusal(MINOR_UNITS),
    ] = 0


class ModeChange(RequestBody):
    """Either field or both; the other keeps its value."""

    when_empty: ClassVar[str] = "give lock_mode, race_window_ms or both"

    # Lax only here: strict mode takes enum members alone, and JSON sends names.
    lock_mode: Annotated[
        Annotated[LockMode, Field(strict=False)] | MISSING,
        Refusal("must be one of " + ", ".join(mode.value for mode in LockMode)),
    ] = MISSING
    race_window_ms: Annotated[
        Annotated[
            int,
            Field(
                ge=0,
                le=MAX_RACE_WINDOW_MS,
                description="the pause between reading and writing a balance, in every mode; "
                f"{INTEGER_ONLY}",
            ),
        ]
        | MISSING,
        Refusal(
            "must be an integer number of milliseconds",
            f"must be between 0 and {MAX_RACE_WINDOW_MS}",
        ),
    ] = MISSING
