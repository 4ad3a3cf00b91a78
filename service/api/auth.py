"""Client authentication: who may call the API at all, and who may read the admin's pages.

With `BANK_API_TOKENS` set, every route except the public ones (liveness,
readiness, metrics, the OpenAPI document and the docs page with its files)
needs `Authorization: Bearer <token>`, one of those tokens or the admin
token; anything else is a 401 problem with `WWW-Authenticate: Bearer`.
With `BANK_ADMIN_ONLY_READS=1`, `GET /audit` and `GET /mode` need the admin
token itself, answered as `PUT /mode` answers (401 without a bearer token,
403 with another one).

The check runs before the request is routed to a view: a refused request
reads no body, runs nothing and stores nothing (not even an
`Idempotency-Key`). An unknown path or a wrong method is refused with the
same 401 as a real route, so a client without a token learns nothing of
which routes exist; with a token it gets the usual 404 or 405.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against
every configured token without stopping at a match: the time taken depends
neither on which token matched, nor on how much of one matched, nor on a
token's length. No token is logged or echoed in a problem.

This module knows the configuration and the request, nothing of the bank.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask, current_app, request

from service.api.errors import ProblemError
from service.api.spec import Endpoint
from service.config import Config

EXTENSION_KEY = "bankrace.auth"
CHALLENGE = 'Bearer realm="bankrace"'
WRONG_TOKEN_CHALLENGE = f'{CHALLENGE}, error="invalid_token"'
# Views anyone may call: probes, scrapers and the API's own description.
PUBLIC_ENDPOINTS = frozenset(
    {
        "ops.healthz",
        "ops.readyz",
        "ops.metrics_text",
        "docs.openapi_document",
        "docs.docs_page",
        "docs.docs_initializer",
        "docs.docs_asset",
    }
)
# Views BANK_ADMIN_ONLY_READS puts behind the admin token.
ADMIN_READ_ENDPOINTS = frozenset({"ops.audit", "admin.get_mode"})
ADMIN_PROBLEMS = ("unauthorized", "forbidden")
# OpenAPI security scheme names, not tokens; adminToken is declared by service/api/openapi.py.
API_TOKEN_SCHEME = "apiToken"  # nosec B105  # a name
ADMIN_TOKEN_SCHEME = "adminToken"  # nosec B105  # a name


def digest(token: str) -> bytes:
    """A fixed-length stand-in for a token, so that comparing reveals nothing of its length."""
    # surrogatepass: any str a header can decode to has bytes of its own; no two share them.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def matches_any(given: str, digests: Iterable[bytes]) -> bool:
    """Whether `given` is one of the tokens of `digests`; every digest is compared, always."""
    presented = digest(given)
    matched = False
    for expected in digests:
        matched |= hmac.compare_digest(presented, expected)  # no short-circuit: `|`, not `or`
    return matched


@dataclass(frozen=True)
class Guard:
    """The tokens this app takes, as digests."""

    #: The client tokens and the admin token; empty: no client authentication.
    client_digests: tuple[bytes, ...]
    #: The admin token alone; empty: admin is off.
    admin_digests: tuple[bytes, ...]
    admin_only_reads: bool

    @classmethod
    def from_config(cls, config: Config) -> Guard:
        admin = (digest(config.admin_token),) if config.admin_token else ()
        clients = tuple(digest(token) for token in config.api_tokens)
        return cls(clients + admin if clients else (), admin, config.admin_only_reads)

    def needs_admin(self, endpoint: str | None) -> bool:
        return self.admin_only_reads and endpoint in ADMIN_READ_ENDPOINTS

    def needs_client_token(self, endpoint: str | None) -> bool:
        return bool(self.client_digests) and endpoint not in PUBLIC_ENDPOINTS


def install(app: Flask, config: Config) -> None:
    app.extensions[EXTENSION_KEY] = Guard.from_config(config)
    app.before_request(authenticate)


def guard_of(app: Flask) -> Guard:
    guard: Guard = app.extensions[EXTENSION_KEY]
    return guard


def bearer_token() -> str | None:
    """The token of `Authorization: Bearer <token>`, or None when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authenticate() -> None:
    """Refuse the request (before its view runs) unless it carries the token it needs."""
    guard = guard_of(current_app)
    endpoint = request.endpoint  # None when the path or method routes nowhere
    if guard.needs_admin(endpoint):
        _require_admin(guard)
    elif guard.needs_client_token(endpoint):
        token = bearer_token()
        if token is None:
            raise _unauthorized("send Authorization: Bearer <token>", CHALLENGE)
        if not matches_any(token, guard.client_digests):
            raise _unauthorized("the bearer token is not one of this service's tokens")


def _require_admin(guard: Guard) -> None:
    token = bearer_token()
    if token is None:
        raise _unauthorized("send Authorization: Bearer <admin token>", CHALLENGE)
    if not matches_any(token, guard.admin_digests):
        detail = f"{request.method} {request.path} needs the admin token"
        raise ProblemError(403, "forbidden", detail)


def _unauthorized(detail: str, challenge: str = WRONG_TOKEN_CHALLENGE) -> ProblemError:
    return ProblemError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


# --------------------------------------------------------------------------- OpenAPI


def security_schemes(app: Flask) -> dict[str, dict[str, Any]]:
    """The schemes service/api/openapi.py declares beside `adminToken` for this app."""
    if not guard_of(app).client_digests:
        return {}
    return {
        API_TOKEN_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "one of `BANK_API_TOKENS` (the admin token is taken too)",
        }
    }


def documented(app: Flask, name: str, endpoint: Endpoint) -> Endpoint:
    """`endpoint` as this app's authentication serves it: its security and its 401/403."""
    guard = guard_of(app)
    if guard.needs_admin(name):
        return replace(endpoint, admin=True, problems=(*endpoint.problems, *ADMIN_PROBLEMS))
    if not guard.needs_client_token(name) or endpoint.admin:
        return endpoint  # public, or already documented as needing the admin token
    security: list[dict[str, list[str]]] = [{API_TOKEN_SCHEME: []}]
    if guard.admin_digests:
        security.append({ADMIN_TOKEN_SCHEME: []})
    return replace(
        endpoint,
        problems=(*endpoint.problems, "unauthorized"),
        extra={**endpoint.extra, "security": security},
    )
