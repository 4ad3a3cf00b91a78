"""Client authentication, admin-only reads, security headers and CORS (service/api/auth.py,
service/api/headers.py).

The routes are taken from the app itself, so a route added later is covered
(protected unless it is one of the public views). The in-memory store
serves every case: authentication runs before any view and knows no store.
"""

from __future__ import annotations

import hmac
import io
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from service import create_app
from service.api import auth, docs, headers
from service.domain import StoreUnavailable
from service.logs import JsonLogHandler
from tests.api.helpers import assert_problem, open_account, snapshot
from tests.api.test_errors import FailingStore
from tests.conftest import ADMIN_TOKEN, make_config

CLIENT_TOKENS = ("client-token-one", "client-token-two", "client-token-three")
ORIGIN = "https://app.example:8443"
OTHER_ORIGIN = "https://evil.example"
# The public list: health, readiness, metrics, the document, the docs page (and files).
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}
WRONG_AUTHORIZATIONS = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer client-token-wrong"},
    {"Authorization": f"Bearer {CLIENT_TOKENS[0]}x"},
    {"Authorization": f"Bearer {CLIENT_TOKENS[0][:-1]}"},
    {"Authorization": f"Bearer {CLIENT_TOKENS[0].upper()}"},
    {"Authorization": f"Basic {CLIENT_TOKENS[0]}"},
    {"Authorization": CLIENT_TOKENS[0]},
    {"X-Api-Token": CLIENT_TOKENS[0]},
]
BODIES: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "accounts.open_account": lambda _a, _b: {"owner": "mallory", "opening_balance": 5},
    "accounts.deposit": lambda _a, _b: {"amount": 7},
    "accounts.withdraw": lambda _a, _b: {"amount": 3},
    "transfers.create_transfer": lambda a, b: {"from_account": a, "to_account": b, "amount": 2},
    "admin.put_mode": lambda _a, _b: {"lock_mode": "unlocked", "race_window_ms": 5},
}
ROUTE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<arguments>[^)]*)\))?:)?(?P<name>\w+)>")
VERSION_BANNER = re.compile(r"werkzeug|flask|python|gunicorn|bankrace/", re.IGNORECASE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CLIENT = bearer(CLIENT_TOKENS[0])
ADMIN = bearer(ADMIN_TOKEN)


def build(**overrides: object) -> Flask:
    return create_app(make_config("memory://", **overrides))


@pytest.fixture(scope="module")
def guarded_app() -> Iterator[Flask]:
    application = build(api_tokens=CLIENT_TOKENS)
    yield application
    application.extensions["bankrace"].store.close()


@pytest.fixture
def guarded(guarded_app: Flask) -> FlaskClient:
    return guarded_app.test_client()


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    built: list[Flask] = []

    def make(**overrides: object) -> Flask:
        application = build(**overrides)
        built.append(application)
        return application

    yield make
    for application in built:
        application.extensions["bankrace"].store.close()


class Authorized(FlaskClient):
    """A test client that sends a client token unless the request names its own."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Authorization", CLIENT["Authorization"])
        return super().open(*args, headers=headers, **kwargs)


def authorized(application: Flask) -> FlaskClient:
    return Authorized(application, application.response_class)


def routes(application: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, rule) of every route the app answers, HEAD and OPTIONS aside."""
    return sorted(
        (rule.endpoint, method, rule.rule)
        for rule in application.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    )


def example_path(rule: str, account_id: int) -> str:
    def value(match: re.Match[str]) -> str:
        if match["converter"] == "any":
            return match["arguments"].split(",")[0].strip().strip("'\"")
        return str(account_id)

    return ROUTE_ARGUMENT.sub(value, rule)


def is_public(rule: str) -> bool:
    return rule in PUBLIC_PATHS or rule.startswith("/docs/")


# --------------------------------------------------------------------------- which routes


def test_public_routes_are_exactly_health_readiness_metrics_and_docs(guarded_app: Flask) -> None:
    """The views left open are those of the issue's list; every other route is protected."""
    for endpoint, _method, rule in routes(guarded_app):
        assert (endpoint in auth.PUBLIC_ENDPOINTS) == is_public(rule), (endpoint, rule)
    public_rules = {rule for endpoint, _m, rule in routes(guarded_app) if is_public(rule)}
    assert public_rules >= PUBLIC_PATHS
    assert len(routes(guarded_app)) - len(public_rules) >= 12  # the bank's own routes


def test_every_protected_route_is_401_without_a_valid_token_and_changes_nothing(
    guarded_app: Flask,
) -> None:
    """No token, a wrong one, a near miss or another scheme: 401 problem, WWW-Authenticate."""
    client = authorized(guarded_app)
    source = open_account(client, opening_balance=50)["id"]
    target = open_account(client)["id"]
    before = snapshot(client, source, target)
    anonymous = guarded_app.test_client()
    checked = 0
    for endpoint, method, rule in routes(guarded_app):
        if is_public(rule):
            continue
        path = example_path(rule, source)
        body = BODIES.get(endpoint, lambda _a, _b: None)(source, target)
        for authorization in WRONG_AUTHORIZATIONS:
            response = anonymous.open(
                path,
                method=method,
                json=body,
                headers={**authorization, "Idempotency-Key": f"{method}{path}"},
            )
            assert_problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="bankrace"')
            checked += 1
    assert checked >= 12 * len(WRONG_AUTHORIZATIONS)
    assert snapshot(client, source, target) == before
    assert client.get("/mode").get_json()["lock_mode"] == "locked"


def test_every_protected_route_takes_each_client_token_and_the_admin_token(
    guarded_app: Flask,
) -> None:
    """With any configured token (or the admin's) a GET of every protected route gets through."""
    client = authorized(guarded_app)
    account = open_account(client, opening_balance=1)["id"]
    for endpoint, method, rule in routes(guarded_app):
        if is_public(rule) or method != "GET":
            continue
        for token in (*CLIENT_TOKENS, ADMIN_TOKEN):
            response = client.get(example_path(rule, account), headers=bearer(token))
            assert response.status_code not in (401, 403), endpoint
            assert response.status_code < 500, (endpoint, response.get_data(as_text=True))


def test_bearer_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    guarded: FlaskClient,
) -> None:
    """RFC 7235: the scheme name is case-insensitive."""
    for value in (f"bearer {CLIENT_TOKENS[1]}", f"BEARER  {CLIENT_TOKENS[1]} "):
        assert guarded.get("/accounts", headers={"Authorization": value}).status_code == 200


def test_public_routes_answer_without_a_token(guarded: FlaskClient) -> None:
    """Probes, scrapers and the docs need no token, even with a wrong one."""
    paths = [*sorted(PUBLIC_PATHS), "/docs/swagger-initializer.js", "/docs/swagger-ui.css"]
    for path in paths:
        for authorization in ({}, {"Authorization": "Bearer client-token-wrong"}):
            with guarded.get(path, headers=authorization) as response:
                assert response.status_code == 200, (path, response.get_data(as_text=True))


def test_unknown_routes_and_methods_are_401_before_routing(guarded: FlaskClient) -> None:
    """Without a token an unknown path or method is a 401 like any route: nothing is revealed."""
    for method, path in (("GET", "/nope"), ("GET", "/accounts/0"), ("POST", "/healthz")):
        assert_problem(guarded.open(path, method=method), 401, "unauthorized")
    assert_problem(guarded.get("/nope", headers=CLIENT), 404, "not_found")
    assert_problem(guarded.post("/healthz", headers=CLIENT), 405, "method_not_allowed")


def test_without_api_tokens_every_route_is_open(make_app: Callable[..., Flask]) -> None:
    """BANK_API_TOKENS unset: no token needed (the admin still guards PUT /mode)."""
    client = make_app().test_client()
    assert open_account(client)["id"] == 1
    assert client.get("/audit").status_code == 200
    assert_problem(client.put("/mode", json={"race_window_ms": 1}), 401, "unauthorized")


def test_a_refused_post_stores_no_idempotency_key(guarded: FlaskClient) -> None:
    """A 401 runs nothing: the same key with a token afterwards is a first request, not a replay."""
    body = {"owner": "keyed"}
    key = {"Idempotency-Key": "auth-key-1"}
    assert_problem(guarded.post("/accounts", json=body, headers=key), 401, "unauthorized")
    response = guarded.post("/accounts", json=body, headers={**key, **CLIENT})
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers


def test_put_mode_still_needs_the_admin_token(guarded: FlaskClient) -> None:
    """A client token gets past authentication but not the admin check; the admin token does."""
    assert_problem(
        guarded.put("/mode", json={"race_window_ms": 3}, headers=CLIENT), 403, "forbidden"
    )
    response = guarded.put("/mode", json={"race_window_ms": 0}, headers=ADMIN)
    assert response.status_code == 200


# --------------------------------------------------------------------------- admin-only reads


@pytest.mark.parametrize("tokens", [(), CLIENT_TOKENS])
def test_admin_only_reads_guard_audit_and_mode(
    make_app: Callable[..., Flask], tokens: tuple[str, ...]
) -> None:
    """GET /audit and GET /mode: 401 without a token (or with one that is nobody's, when client
    tokens are set), 403 with another token, 200 with the admin's: as PUT /mode answers."""
    client = make_app(api_tokens=tokens, admin_only_reads=True).test_client()
    nobodys = 401 if tokens else 403
    for path in ("/audit", "/mode"):
        response = client.get(path)
        assert_problem(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_problem(client.get(path, headers=bearer(CLIENT_TOKENS[0])), 403, "forbidden")
        wrong = client.get(path, headers=bearer("client-token-wrong"))
        assert wrong.status_code == nobodys
        put = client.put("/mode", json={"race_window_ms": 1}, headers=bearer("client-token-wrong"))
        assert put.status_code == nobodys
        assert client.get(path, headers=ADMIN).status_code == 200
    everyone = {} if not tokens else CLIENT
    assert client.get("/accounts", headers=everyone).status_code == 200
    assert client.get("/accounts/1/audit", headers=everyone).status_code == 404


def test_admin_only_reads_guard_metrics_too(make_app: Callable[..., Flask]) -> None:
    """/metrics shows the lock mode, race window and audit figures: the admin token's alone."""
    for tokens in ((), CLIENT_TOKENS):
        client = make_app(api_tokens=tokens, admin_only_reads=True).test_client()
        client.get("/audit", headers=ADMIN)  # the audit gauges now hold figures
        anonymous = client.get("/metrics")
        assert_problem(anonymous, 401, "unauthorized")
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        for token, status in (
            (CLIENT_TOKENS[0], 403),
            ("client-token-wrong", 401 if tokens else 403),
        ):
            refused = client.get("/metrics", headers=bearer(token))
            assert refused.status_code == status
            assert "bankrace_" not in refused.get_data(as_text=True)
        scraped = client.get("/metrics", headers=ADMIN)
        assert scraped.status_code == 200
        text = scraped.get_data(as_text=True)
        for series in ("bankrace_lock_mode", "bankrace_race_window_seconds", "bankrace_audit_"):
            assert series in text
    for token in ((), CLIENT_TOKENS):  # without admin-only reads, scrapers need no token
        assert make_app(api_tokens=token).test_client().get("/metrics").status_code == 200


# The same admin token, spelt as clients send it: RFC 6750 allows 1*SP after the scheme.
ADMIN_FORMS = [
    f"Bearer {ADMIN_TOKEN}",
    f"Bearer  {ADMIN_TOKEN}",
    f"bearer {ADMIN_TOKEN}",
    f"BEARER   {ADMIN_TOKEN} ",
]
NOT_ADMIN_FORMS = [
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN[:-1]}",
    f"Bearer {ADMIN_TOKEN} {ADMIN_TOKEN}",
    f"Bearer\t{ADMIN_TOKEN}",
    f"Basic {ADMIN_TOKEN}",
    ADMIN_TOKEN,
    f"Bearer {CLIENT_TOKENS[0]}",
]
ADMIN_PATHS = [("PUT", "/mode"), ("GET", "/mode"), ("GET", "/audit"), ("GET", "/metrics")]


@pytest.mark.parametrize("authorization", ADMIN_FORMS)
def test_every_admin_path_takes_every_spelling_of_the_admin_token(
    make_app: Callable[..., Flask], authorization: str
) -> None:
    """PUT /mode and the admin-only reads: one check, so one verdict for `Bearer  <token>`."""
    client = make_app(api_tokens=CLIENT_TOKENS, admin_only_reads=True).test_client()
    for method, path in ADMIN_PATHS:
        body = {"race_window_ms": 0} if method == "PUT" else None
        response = client.open(
            path, method=method, json=body, headers={"Authorization": authorization}
        )
        assert response.status_code == 200, (method, path, response.get_data(as_text=True))


@pytest.mark.parametrize("authorization", NOT_ADMIN_FORMS)
@pytest.mark.parametrize("tokens", [(), CLIENT_TOKENS])
def test_every_admin_path_refuses_what_is_not_the_admin_token_alike(
    make_app: Callable[..., Flask], tokens: tuple[str, ...], authorization: str
) -> None:
    """A near miss gets the same 401 or 403 from PUT /mode and from each admin-only read."""
    client = make_app(api_tokens=tokens, admin_only_reads=True).test_client()
    verdicts = set()
    for method, path in ADMIN_PATHS:
        body = {"race_window_ms": 1} if method == "PUT" else None
        headers = {"Authorization": authorization} if authorization else {}
        response = client.open(path, method=method, json=body, headers=headers)
        verdicts.add(response.status_code)
        assert response.status_code in (401, 403), (method, path)
    assert len(verdicts) == 1, (authorization, verdicts)
    assert client.get("/mode", headers=ADMIN).get_json()["race_window_ms"] == 0


def test_put_mode_with_admin_off_is_403_whatever_is_sent(make_app: Callable[..., Flask]) -> None:
    """No BANK_ADMIN_TOKEN: admin is off, with or without a bearer token."""
    client = make_app(admin_token=None).test_client()
    for sent in ({}, ADMIN, bearer("anything-at-all")):
        body = assert_problem(
            client.put("/mode", json={"race_window_ms": 1}, headers=sent), 403, "forbidden"
        )
        assert "BANK_ADMIN_TOKEN" in body["detail"]


# --------------------------------------------------------------------------- comparison, logs


def test_matches_any_compares_digests_and_tells_tokens_apart() -> None:
    """The helper finds a token among many and refuses near misses and the empty string."""
    digests = [auth.digest(token) for token in CLIENT_TOKENS]
    assert all(auth.matches_any(token, digests) for token in CLIENT_TOKENS)
    for given in ("", "client-token", "client-token-one ", "client-token-fou\u0072", "\udcff"):
        assert not auth.matches_any(given, digests)
    assert {len(digest) for digest in digests} == {32}


@pytest.mark.parametrize(
    "token", [CLIENT_TOKENS[0], CLIENT_TOKENS[-1], ADMIN_TOKEN, "client-token-wrong", "x"]
)
def test_every_token_is_compared_in_constant_time_on_every_request(
    guarded: FlaskClient, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """hmac.compare_digest runs once per configured token, whichever matched, on 32-byte digests."""
    compared: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest

    def counting(left: bytes, right: bytes) -> bool:
        compared.append((len(left), len(right)))
        return real_compare(left, right)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    guarded.get("/accounts", headers=bearer(token))
    assert compared == [(32, 32)] * (len(CLIENT_TOKENS) + 1)


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = JsonLogHandler(buffer)
    service_logger = logging.getLogger("service")
    service_logger.addHandler(handler)
    yield buffer
    service_logger.removeHandler(handler)


def test_no_token_reaches_the_log(log_text: io.StringIO, make_app: Callable[..., Flask]) -> None:
    """Accepted, refused, admin and wrong tokens: none appears in any log line."""
    client = make_app(api_tokens=CLIENT_TOKENS, admin_only_reads=True).test_client()
    wrong = "client-token-n0t-0ne-of-them"
    client.post("/accounts", json={"owner": "alice"}, headers=CLIENT)
    client.get("/accounts", headers=bearer(wrong))
    client.get("/nope", headers=bearer(wrong))
    client.get("/audit", headers=CLIENT)
    client.get("/audit", headers=ADMIN)
    client.put("/mode", json={"race_window_ms": 1}, headers=CLIENT)
    client.put("/mode", json={"race_window_ms": 1}, headers=ADMIN)
    text = log_text.getvalue()
    assert text.count('"status": 401') == 2 and text.count('"status": 403') == 2, text
    for secret in (*CLIENT_TOKENS, ADMIN_TOKEN, wrong):
        assert secret not in text
    assert "Bearer client" not in text and "Bearer test" not in text


def test_config_never_shows_a_token(make_app: Callable[..., Flask]) -> None:
    """The app's settings as shown to people mask every client token."""
    application = make_app(api_tokens=CLIENT_TOKENS)
    guard = application.extensions[auth.EXTENSION_KEY]
    assert all(token not in repr(guard) for token in CLIENT_TOKENS)


# --------------------------------------------------------------------------- headers


def assert_secure_headers(response: TestResponse) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    for name, value in response.headers.items():
        assert not VERSION_BANNER.search(f"{name}: {value}"), (name, value)
    assert "Server" not in response.headers


def test_security_headers_on_every_kind_of_answer(guarded: FlaskClient) -> None:
    """Successes, refusals and errors (401 to 422) carry the headers; API answers are no-store."""
    account = open_account(authorized(guarded.application), opening_balance=5)["id"]
    responses = {
        200: guarded.get(f"/accounts/{account}", headers=CLIENT),
        201: guarded.post(f"/accounts/{account}/deposit", json={"amount": 1}, headers=CLIENT),
        401: guarded.get(f"/accounts/{account}"),
        403: guarded.put("/mode", json={"race_window_ms": 1}, headers=CLIENT),
        404: guarded.get("/accounts/999999", headers=CLIENT),
        405: guarded.delete("/accounts", headers=CLIENT),
        409: guarded.post(f"/accounts/{account}/withdraw", json={"amount": 10**6}, headers=CLIENT),
        413: guarded.post(
            "/accounts", data=b"x" * 70_000, content_type="application/json", headers=CLIENT
        ),
        415: guarded.post("/accounts", data=b"{}", headers=CLIENT),
        422: guarded.post("/accounts", json={"owner": ""}, headers=CLIENT),
    }
    for status, response in responses.items():
        assert response.status_code == status, response.get_data(as_text=True)
        assert_secure_headers(response)
        assert response.headers["Cache-Control"] == "no-store", status
        assert "Access-Control-Allow-Origin" not in response.headers


def test_security_headers_on_500_and_503() -> None:
    """A bug's 500 and a store's 503 carry them too."""
    store = FailingStore()
    client = create_app(make_config("memory://"), store=store).test_client()
    try:
        account = open_account(client, opening_balance=5)["id"]
        store.write_error = StoreUnavailable("down")
        unavailable = client.post(f"/accounts/{account}/deposit", json={"amount": 1})
        store.read_error = RuntimeError("a bug")
        failed = client.get(f"/accounts/{account}")
    finally:
        store.close()
    for response, status in ((unavailable, 503), (failed, 500)):
        assert response.status_code == status
        assert_secure_headers(response)
        assert response.headers["Cache-Control"] == "no-store"


def test_docs_page_keeps_its_own_strict_policy(guarded: FlaskClient) -> None:
    """/docs keeps the Swagger UI policy; its static files are revalidated, not no-store."""
    page = guarded.get("/docs")
    assert page.headers["Content-Security-Policy"] == docs.CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert_secure_headers(page)
    with guarded.get("/docs/swagger-ui.css") as asset:
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        assert asset.headers["Cache-Control"] == "no-cache"


# --------------------------------------------------------------------------- CORS


def preflight(client: FlaskClient, path: str, origin: str, method: str = "POST") -> TestResponse:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_no_cors_header_when_no_origin_is_configured(guarded: FlaskClient) -> None:
    """BANK_CORS_ORIGINS unset: no Access-Control-* and no Vary: Origin, preflight included."""
    answers = [
        guarded.get("/accounts", headers={**CLIENT, "Origin": ORIGIN}),
        guarded.get("/healthz", headers={"Origin": ORIGIN}),
        preflight(guarded, "/accounts", ORIGIN),
        preflight(guarded, "/healthz", ORIGIN, "GET"),
    ]
    assert answers[2].status_code == 401  # an OPTIONS without a token is a request like any
    for response in answers:
        assert not any(name.startswith("Access-Control-") for name, _value in response.headers)
        assert "Origin" not in response.vary


def test_cors_allows_exactly_the_listed_origins(make_app: Callable[..., Flask]) -> None:
    """A listed origin is echoed (never *), errors included; another origin gets nothing."""
    client = make_app(api_tokens=CLIENT_TOKENS, cors_origins=(ORIGIN,)).test_client()
    allowed = client.get("/accounts", headers={**CLIENT, "Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Origin" in allowed.vary
    refused = client.get("/accounts", headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN  # the page can read the 401
    for origin in (OTHER_ORIGIN, ORIGIN + "/", "null", ORIGIN.upper()):
        other = client.get("/accounts", headers={**CLIENT, "Origin": origin})
        assert "Access-Control-Allow-Origin" not in other.headers
        assert "Origin" in other.vary
    no_origin = client.get("/accounts", headers=CLIENT)
    assert "Access-Control-Allow-Origin" not in no_origin.headers
    assert "Origin" in no_origin.vary


def test_cors_preflight_is_answered_for_listed_origins_before_authentication(
    make_app: Callable[..., Flask],
) -> None:
    """A listed origin's preflight (no token, as browsers send it) is a 204 naming the methods."""
    client = make_app(api_tokens=CLIENT_TOKENS, cors_origins=(ORIGIN,)).test_client()
    answer = preflight(client, "/accounts/1/deposit", ORIGIN)
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert answer.headers["Access-Control-Allow-Methods"] == "POST"
    allowed_headers = answer.headers["Access-Control-Allow-Headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= {
        name.strip() for name in allowed_headers.split(",")
    }
    assert int(answer.headers["Access-Control-Max-Age"]) == headers.CORS_MAX_AGE_SECONDS
    assert (
        preflight(client, "/mode", ORIGIN, "PUT").headers["Access-Control-Allow-Methods"]
        == "GET, PUT"
    )
    other = preflight(client, "/accounts", OTHER_ORIGIN)
    assert other.status_code == 401
    assert "Access-Control-Allow-Origin" not in other.headers
    assert preflight(client, "/nope", ORIGIN).status_code == 401  # no route: no preflight answer
    assert open_account(authorized(client.application))["id"] == 1  # nothing ran before


# --------------------------------------------------------------------------- OpenAPI


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def test_openapi_document_shows_the_bearer_scheme_on_protected_operations(
    guarded: FlaskClient,
) -> None:
    """apiToken (or adminToken) on every protected operation with its 401; none on public ones."""
    document = guarded.get("/openapi.json").get_json()
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiToken"] == {**schemes["apiToken"], "type": "http", "scheme": "bearer"}
    for path, method, operation in operations(document):
        if is_public(re.sub(r"\{(\w+)\}", r"<\1>", path)):
            assert "security" not in operation, path
            assert "401" not in operation["responses"], path
            continue
        expected = (
            [{"adminToken": []}]
            if (path, method) == ("/mode", "PUT")
            else [{"apiToken": []}, {"adminToken": []}]
        )
        assert operation["security"] == expected, (path, method)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (path, method)


def test_openapi_document_shows_admin_only_reads(make_app: Callable[..., Flask]) -> None:
    """With BANK_ADMIN_ONLY_READS, GET /audit, /mode and /metrics need adminToken (401, 403)."""
    client = make_app(admin_only_reads=True).test_client()
    document = client.get("/openapi.json").get_json()
    validate(document)
    assert "apiToken" not in document["components"]["securitySchemes"]
    for path in ("/audit", "/mode", "/metrics"):
        operation = document["paths"][path]["get"]
        assert operation["security"] == [{"adminToken": []}]
        assert {"401", "403"} <= set(operation["responses"])
    assert "security" not in document["paths"]["/accounts"]["get"]
