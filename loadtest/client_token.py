"""The load tools' client token: read once, sent as a Bearer header, never shown.

A service started with `BANK_API_TOKENS` refuses every request without
`Authorization: Bearer <token>` (401). The load tools (the race test, the
Jepsen-style bank test, the live view) take the token from
`BANK_CLIENT_TOKEN`, the client side's name for one of those tokens (the
service never reads it: `loadtest.service_process` keeps every `BANK_*`
away from the services it starts), or from the Locust option `--bank-token`.

The token only ever goes into a request header: no report, history, log
line or error message holds it. A 401 gets the one line a person needs
(`refusal`); a tool stops at once on it rather than send a load that would be
refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

CLIENT_TOKEN_VARIABLE = "BANK_CLIENT_TOKEN"  # nosec B105  # a variable's name, not a token
ADMIN_TOKEN_VARIABLE = "BANK_ADMIN_TOKEN"  # nosec B105  # a variable's name, not a token
TOKEN_OPTION = "--bank-token"  # nosec B105  # an option's name, not a token
NEEDS_TOKEN = f"the server needs a client token: set {CLIENT_TOKEN_VARIABLE}"
WRONG_TOKEN = (
    f"the server refused the client token: {CLIENT_TOKEN_VARIABLE} is not one of its "
    "BANK_API_TOKENS"
)


def client_token(environment: Mapping[str, str] = os.environ) -> str | None:
    """`BANK_CLIENT_TOKEN`, or None when it is unset or blank."""
    return environment.get(CLIENT_TOKEN_VARIABLE, "").strip() or None


def admin_token(environment: Mapping[str, str] = os.environ) -> str | None:
    """`BANK_ADMIN_TOKEN`, or None when it is unset or blank."""
    return environment.get(ADMIN_TOKEN_VARIABLE, "").strip() or None


def bearer(token: str | None) -> dict[str, str]:
    """The header that carries `token`; none without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def refusal(request_headers: Mapping[str, str]) -> str:
    """What a 401 to a request with these headers means, in one line."""
    return WRONG_TOKEN if "Authorization" in request_headers else NEEDS_TOKEN


def add_locust_option(parser: Any) -> None:
    """`--bank-token` on a locustfile's command line (BANK_CLIENT_TOKEN by default).

    Kept out of the web UI's form, which would otherwise show its value in the page.
    """
    parser.add_argument(
        TOKEN_OPTION,
        default="",
        env_var=CLIENT_TOKEN_VARIABLE,
        include_in_web_ui=False,
        help=f"client token sent as 'Authorization: Bearer' to a service with BANK_API_TOKENS "
        f"(default: ${CLIENT_TOKEN_VARIABLE}; prefer the variable: a command line shows in ps)",
    )


def locust_token(options: Any) -> str | None:
    """The client token of a locustfile's parsed command line."""
    return str(getattr(options, "bank_token", "") or "").strip() or None
