"""Client authentication: who may call the API at all, and who may read the admin's pages.

With `BANK_API_TOKENS` set, every route except the public ones (liveness,
readiness, metrics, the OpenAPI document and the docs page with its files)
needs `Authorization: Bearer <token>`, one of those tokens or the admin
token; anything else is a 401 problem with `WWW-Authenticate: Bearer`.
With `BANK_ADMIN_ONLY_READS=1`, `GET /audit`, `GET /mode` and `GET /metrics`
(which shows the lock mode, the race window and the last audit) need the
admin token itself, answered as `PUT /mode` answers (401 without a bearer
token, 403 with another one). `require_admin` is the one admin check: these
reads and `PUT /mode` (service/api/admin.py) both call it, so a token is
the admin's or not whichever path it is sent to.

Each client is also an Idempotency-Key scope (`idempotency_scope`): with
client tokens, a digest of the request's token; without, one scope.

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
from service.idempotency import DEFAULT_SCOPE

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
# Views BANK_ADMIN_ONLY_READS puts behind the admin token: each shows the lock mode, the race
# window or audit figures (DESIGN §3), /metrics all three.
ADMIN_READ_ENDPOINTS = frozenset({"ops.audit", "admin.get_mode", "ops.metrics_text"})
ADMIN_PROBLEMS = ("unauthorized", "forbidden")
# OpenAPI security scheme names, not tokens; adminToken is declared by service/api/openapi.py.
API_TOKEN_SCHEME = "apiToken"  # nosec B105  # a name
ADMIN_TOKEN_SCHEME = "adminToken"  # nosec B105  # a name


# Domain separation: a client's stored key scope is not the digest its token is compared by.
SCOPE_DIGEST_LABEL = b"bankrace idempotency-key scope\x00"


def _token_bytes(token: str) -> bytes:
    # surrogatepass: any str a header can decode to has bytes of its own; no two share them.
    return token.encode("utf-8", "surrogatepass")


def digest(token: str) -> bytes:
    """A fixed-length stand-in for a token, so that comparing reveals nothing of its length."""
    return hashlib.sha256(_token_bytes(token)).digest()


def scope_digest(token: str) -> str:
    """The key scope stored for a client: 64 hex digits, from which the token cannot be read."""
    return hashlib.sha256(SCOPE_DIGEST_LABEL + _token_bytes(token)).hexdigest()


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
        # An admin-only read is no longer public: a token that is nobody's is a 401 there too,
        # as on PUT /mode, before the admin check refuses a client's token (403).
        public = endpoint in PUBLIC_ENDPOINTS and not self.needs_admin(endpoint)
        return bool(self.client_digests) and not public


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
    if guard.needs_client_token(endpoint):
        token = bearer_token()
        if token is None:
            raise _unauthorized("send Authorization: Bearer <token>", CHALLENGE)
        if not matches_any(token, guard.client_digests):
            raise _unauthorized("the bearer token is not one of this service's tokens")
    if guard.needs_admin(endpoint):
        _require_admin(guard)


def require_admin() -> None:
    """Refuse the request unless it carries the admin token: 403 when admin is off, 401
    without a bearer token, 403 with any other token."""
    _require_admin(guard_of(current_app))


def _require_admin(guard: Guard) -> None:
    if not guard.admin_digests:
        raise ProblemError(403, "forbidden", "admin is disabled: BANK_ADMIN_TOKEN is not set")
    token = bearer_token()
    if token is None:
        raise _unauthorized("send Authorization: Bearer <admin token>", CHALLENGE)
    if not matches_any(token, guard.admin_digests):
        detail = f"{request.method} {request.path} needs the admin token"
        raise ProblemError(403, "forbidden", detail)


def idempotency_scope() -> str:
    """The Idempotency-Key scope of this request's client (DESIGN §3).

    With client tokens, each token (the admin token included) is a client of
    its own, stored as `scope_digest` of it, never the token, so one
    client's key never replays, refuses or blocks another's. Without client
    tokens the service cannot tell clients apart: one scope for all.
    """
    if not guard_of(current_app).client_digests:
        return DEFAULT_SCOPE
    token = bearer_token()
    if token is None:  # authenticate() let no such request through to a view
        raise RuntimeError("a view that needs a client token ran without one")
    return scope_digest(token)


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
