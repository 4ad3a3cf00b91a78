"""What a request body declaration says of one field's value, for tests of the rules.

The rules of amounts, opening balances, currencies, modes and race windows
live in the bodies of service/api/bodies.py (pydantic, strict); tests ask
them one field at a time through this.
"""

from __future__ import annotations

from service.api.bodies import RequestBody, validated
from service.domain import ValidationFailed


def field_error(model: type[RequestBody], name: str, value: object) -> str | None:
    """What `model` says of `value` in field `name` alone (None: taken)."""
    try:
        validated({name: value}, model)
    except ValidationFailed as failure:
        return next((error.message for error in failure.errors if error.field == name), None)
    return None
