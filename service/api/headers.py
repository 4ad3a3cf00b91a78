"""The headers every answer carries for the browser's sake, and CORS for configured origins.

Every response, errors and refusals included:
- `X-Content-Type-Options: nosniff`: a JSON answer is never run as a script
  or read as a page, whatever a client or proxy guesses;
- `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`
  unless the view set its own (the /docs page, service/api/docs.py): an API
  answer opened in a browser loads nothing and cannot be framed;
- `Referrer-Policy: no-referrer`;
- `Cache-Control: no-store` unless the view set its own (the docs page's
  static files are revalidated instead): balances and journals must not be
  kept by a browser or a shared cache.
No header names the software or its version (gunicorn's `Server` is the
worker's business, service/gunicorn_worker.py).

CORS: with `BANK_CORS_ORIGINS` unset no CORS header is ever sent, so a
browser keeps other sites' scripts out. With it set, a request from a listed
origin gets `Access-Control-Allow-Origin: <that origin>` (never `*`) and the
headers a client reads exposed; a preflight (`OPTIONS` with
`Access-Control-Request-Method`) from a listed origin to a route that exists
is answered 204 before authentication, since browsers never send a token on
a preflight. Answers vary by `Origin` then, and say so. No credentials mode:
the bearer token is a header the page sets, not a cookie.

Written here in a few lines rather than with flask-cors: exact origins,
preflight and `Vary` are all this needs, and the image gains no dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Response, current_app, request

EXTENSION_KEY = "bankrace.cors"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
NO_STORE = "no-store"
# Added unless the view set its own.
DEFAULT_HEADERS = (
    ("Content-Security-Policy", API_CONTENT_SECURITY_POLICY),
    ("Cache-Control", NO_STORE),
)
# What a browser page may send and read (DESIGN §3 headers).
CORS_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
CORS_EXPOSED_HEADERS = (
    "Location, Retry-After, WWW-Authenticate, X-Request-ID, X-Lock-Mode, Idempotent-Replayed"
)
CORS_MAX_AGE_SECONDS = 600
AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin in self.origins


def install(app: Flask, origins: tuple[str, ...]) -> None:
    """Register the preflight answer (before authentication, so call this first) and headers."""
    app.extensions[EXTENSION_KEY] = CorsPolicy(frozenset(origins))
    app.before_request(answer_preflight)
    app.after_request(add_headers)


def _policy() -> CorsPolicy:
    policy: CorsPolicy = current_app.extensions[EXTENSION_KEY]
    return policy


def answer_preflight() -> Response | None:
    """204 to a listed origin's preflight for a route that exists; None lets it through."""
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    asked = request.headers.get("Access-Control-Request-Method")
    if asked is None or not _policy().allows(request.headers.get("Origin")):
        return None
    adapter = current_app.url_map.bind_to_environ(request.environ)
    methods = sorted(set(adapter.allowed_methods()) - AUTOMATIC_METHODS)
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type
    response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
    response.headers["Access-Control-Allow-Headers"] = CORS_REQUEST_HEADERS
    response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
    return response


def add_headers(response: Response) -> Response:
    # One pass over the headers the view set, then appends: werkzeug's
    # update() and setdefault() scan the whole list once per header, which
    # cost more than the rest of an answer to GET /healthz (measured: 17 µs
    # against 6 µs per response, same headers in the same order).
    headers = response.headers
    present = {name.lower() for name, _value in headers.items()}
    for name, value in SECURITY_HEADERS.items():
        if name.lower() in present:
            headers.set(name, value)  # replaced, as update() did
        else:
            headers.add(name, value)
    for name, value in DEFAULT_HEADERS:
        if name.lower() not in present:  # the view's own wins
            headers.add(name, value)
    policy = _policy()
    if policy.origins:
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if policy.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = str(origin)
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
    return response
