"""Hostile HTTP requests, as raw bytes, and a raw client that sends them.

A hand-written fuzzer for the bank's HTTP API (until an OpenAPI document can
drive one): `HostileRequests` draws requests from a seeded random.Random in
categories -- random JSON types in every field, malformed JSON texts, media
types and charsets, oversized bodies, Content-Length mismatches, odd paths
and methods, odd query strings, odd headers, odd HTTP framing -- and
`exchange` sends each one on its own connection over a plain socket, so
nothing between the fuzzer and the server tidies a request up.

Black-box: nothing here imports the service.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

BODY_LIMIT_BYTES = 64 * 1024
MAX_AMOUNT = 1_000_000_000_000
BALANCE_LIMIT = 2**53 - 1
DEEP_NESTING = 1000
ANSWER_TIMEOUT_SECONDS = 20
RECEIVE_LIMIT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RawRequest:
    category: str
    method: str
    data: bytes
    #: the Content-Length announced a longer body than was sent (see `exchange`)
    truncated_body: bool = False
    #: the X-Request-ID sent, when the service must echo it
    echo_request_id: str | None = None


@dataclass
class RawResponse:
    status: int | None  # None: no answer (reset, timeout, or closed without a word)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    failure: str = ""

    def json(self) -> object:
        return json.loads(self.body)


def exchange(port: int, request: RawRequest) -> RawResponse:
    """Send the request on a new connection, half-close, and read the answer to EOF.

    Half-closing tells the server no more bytes come, so a body shorter than
    its Content-Length ends at once instead of after the server's read timeout.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_SECONDS) as sock:
            try:
                sock.sendall(request.data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # the server answered (413, 400) and closed before reading it all
                pass
            received = bytearray()
            while len(received) < RECEIVE_LIMIT_BYTES:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
    except OSError as error:
        return RawResponse(None, failure=f"{type(error).__name__}: {error}")
    return parse_response(bytes(received), head_only=request.method == "HEAD")


def parse_response(data: bytes, *, head_only: bool) -> RawResponse:
    """The final response in `data` (interim 1xx answers, e.g. 100 Continue, skipped)."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        return RawResponse(None, failure=f"no complete response head: {data[:80]!r}")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return RawResponse(None, failure=f"bad status line {lines[0]!r}")
    if parts[1].startswith("1"):
        return parse_response(rest, head_only=head_only)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return RawResponse(int(parts[1]), headers, b"" if head_only else rest[:length])


# --------------------------------------------------------------------------- building blocks


def http_request(
    method: str,
    target: str | bytes,
    body: bytes | None = None,
    *,
    content_type: str | None = "application/json",
    extra_headers: list[tuple[str, str | bytes]] | None = None,
    content_length: int | str | None = None,
    version: str = "HTTP/1.1",
    host: bool = True,
) -> bytes:
    """A request's bytes; Content-Length is the body's unless given (`""` leaves it out)."""
    target_bytes = target if isinstance(target, bytes) else target.encode("latin-1")
    lines: list[bytes] = [method.encode("latin-1") + b" " + target_bytes + b" " + version.encode()]
    if host:
        lines.append(b"Host: 127.0.0.1")
    lines.append(b"Connection: close")
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type.encode("latin-1"))
    for name, value in extra_headers or []:
        value_bytes = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(name.encode("latin-1") + b": " + value_bytes)
    if content_length is None and body is not None:
        content_length = len(body)
    if content_length is not None and content_length != "":
        lines.append(b"Content-Length: " + str(content_length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


# JSON texts of every type, each a fragment that can stand for one value.
SCALAR_TEXTS = [
    "true",
    "false",
    "null",
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "-500",
    "10.5",
    "1.0",
    "-0.0",
    "1e3",
    "1E3",
    "1e-3",
    "1e400",
    "-1e400",
    "5e-324",
    "1.7976931348623157e308",
    "1" + "0" * 400,
    "-1" + "0" * 400,
    str(2**53 - 1),
    str(2**53),
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    str(MAX_AMOUNT),
    str(MAX_AMOUNT + 1),
    str(BALANCE_LIMIT),
    "999999999999999999",
    "1000000000000000000",
    '""',
    '" "',
    '"100"',
    '"1e3"',
    '"abc"',
    '"USD"',
    '"usd"',
    '"\\u0000"',
    '"a\\u0000b"',
    '"\\ud800"',
    '"\\udfff"',
    '"\\ud83d\\ude00"',
    '"\\u001f"',
    '"\\u007f"',
    '"\\u2028"',
    '"\\ufeff"',
    '"\\uffff"',
    '"a\\nb"',
    '"\\t"',
    '"caf\\u00e9"',
    '"\u00e9t\u00e9"',
    '"\U0001f4b0"',
    json.dumps("x" * 300),
    json.dumps("y" * 5000),
    '"locked"',
    '"unlocked"',
    '"atomic"',
    '"LOCKED"',
]
UNKNOWN_FIELDS = ["amount ", "Amount", "", "\u0000", "id", "balance", "__proto__", "to", "x" * 100]


class HostileRequests:
    """Seeded generator of hostile requests against the bank's endpoints."""

    def __init__(self, rng: random.Random, account_ids: list[int]) -> None:
        self.rng = rng
        self.account_ids = account_ids
        self.categories: dict[str, Callable[[], RawRequest]] = {
            "fields": self.fields,
            "raw_json": self.raw_json,
            "media_type": self.media_type,
            "oversized": self.oversized,
            "length_mismatch": self.length_mismatch,
            "paths": self.paths,
            "query": self.query,
            "headers": self.headers,
            "framing": self.framing,
        }
        self.weights = [35, 14, 8, 2, 5, 15, 10, 8, 3]

    def draw(self, count: int) -> list[RawRequest]:
        names = self.rng.choices(list(self.categories), weights=self.weights, k=count)
        return [self.categories[name]() for name in names]

    # ------------------------------------------------------------------ values

    def value_text(self, depth: int = 0) -> str:
        roll = self.rng.random()
        if roll < 0.01:
            return self.deep_nesting()
        if depth < 3 and roll < 0.08:
            items = [self.value_text(depth + 1) for _ in range(self.rng.randint(0, 3))]
            return "[" + ",".join(items) + "]"
        if depth < 3 and roll < 0.14:
            return self.object_text(
                [
                    (self.rng.choice([*UNKNOWN_FIELDS, "amount"]), self.value_text(depth + 1))
                    for _ in range(self.rng.randint(0, 3))
                ]
            )
        return self.rng.choice(SCALAR_TEXTS)

    def deep_nesting(self) -> str:
        if self.rng.random() < 0.5:
            return "[" * DEEP_NESTING + "]" * DEEP_NESTING
        return '{"a":' * DEEP_NESTING + "1" + "}" * DEEP_NESTING

    @staticmethod
    def object_text(pairs: list[tuple[str, str]]) -> str:
        """An object from (key, value text) pairs, in order, duplicates kept."""
        return "{" + ",".join(json.dumps(key) + ":" + value for key, value in pairs) + "}"

    def account_text(self) -> str:
        roll = self.rng.random()
        if roll < 0.8:
            return str(self.rng.choice(self.account_ids))
        return self.rng.choice(["0", "-1", "999999", "999999999999999999", str(2**63), "1.0"])

    def valid_owner(self) -> str:
        return json.dumps(
            self.rng.choice(["alice", " bob ", "Zo\u00eb", "\u674e\u96f7", "o" * 200, "d'Arc"])
        )

    def mutated_object(self, valid: dict[str, Callable[[], str]]) -> str:
        """The valid fields, each kept, replaced by a random value, dropped or duplicated;
        sometimes an unknown field too."""
        pairs: list[tuple[str, str]] = []
        for name, make_valid in valid.items():
            roll = self.rng.random()
            if roll < 0.55:
                pairs.append((name, make_valid()))
            elif roll < 0.9:
                pairs.append((name, self.value_text()))
            elif roll < 0.95:
                continue  # dropped
            else:
                pairs += [(name, make_valid()), (name, self.value_text())]
        if self.rng.random() < 0.12:
            pairs.insert(
                self.rng.randint(0, len(pairs)),
                (self.rng.choice(UNKNOWN_FIELDS), self.value_text()),
            )
        self.rng.shuffle(pairs)
        return self.object_text(pairs)

    def encode(self, text: str) -> bytes:
        """UTF-8 (lone surrogates as invalid UTF-8 bytes), sometimes re-encoded in ASCII escapes."""
        shallow = text.count("[") + text.count("{") < 50  # the round trip recurses per level
        if shallow and self.rng.random() < 0.3:
            with contextlib.suppress(ValueError):  # not JSON: sent as it is
                text = json.dumps(json.loads(text))
        return text.encode("utf-8", errors="surrogatepass")

    # ------------------------------------------------------------------ categories

    def money_endpoint(self) -> tuple[str, str, dict[str, Callable[[], str]]]:
        """A write endpoint and a maker of a valid value for each of its fields."""
        rng = self.rng

        def amount() -> str:
            return str(rng.choice([rng.randint(1, 2000), rng.randint(1, MAX_AMOUNT), MAX_AMOUNT]))

        account = self.account_text
        choice = rng.randrange(4)
        if choice == 0:
            return (
                "POST",
                "/accounts",
                {
                    "owner": self.valid_owner,
                    "currency": lambda: rng.choice(['"USD"', '"EUR"', '"XTS"']),
                    "opening_balance": lambda: str(rng.choice([0, rng.randint(0, 10**6)])),
                },
            )
        if choice == 1:
            verb = rng.choice(["deposit", "withdraw"])
            return "POST", f"/accounts/{account()}/{verb}", {"amount": amount}
        if choice == 2:
            return (
                "POST",
                "/transfers",
                {"from_account": account, "to_account": account, "amount": amount},
            )
        return (
            "PUT",
            "/mode",
            {
                "lock_mode": lambda: rng.choice(['"locked"', '"unlocked"', '"atomic"']),
                "race_window_ms": lambda: str(rng.randint(0, 5000)),
            },
        )

    def garbage_authorization(self) -> list[tuple[str, str | bytes]]:
        value = self.rng.choice(
            [
                "",
                "Bearer",
                "Bearer ",
                "Bearer wrong-token",
                "bearer e2e-admin-token-but-longer",
                "Basic YWRtaW46YWRtaW4=",
                "Bearer " + "A" * 4000,
                "Bearer \u00e9\u00e9",
                "Token e2e-admin-token",
                "Bearer\te2e",
            ]
        )
        return [("Authorization", value.encode("utf-8"))] if self.rng.random() < 0.9 else []

    def fields(self) -> RawRequest:
        method, path, valid = self.money_endpoint()
        text = self.mutated_object(valid)
        headers = self.garbage_authorization() if path == "/mode" else []
        return RawRequest(
            "fields",
            method,
            http_request(method, path, self.encode(text), extra_headers=headers),
        )

    def raw_json(self) -> RawRequest:
        method, path, valid = self.money_endpoint()
        rng = self.rng
        good = self.mutated_object(valid)
        texts = [
            "",
            " ",
            "{",
            "}",
            "[]",
            "null",
            "1",
            '"amount"',
            good + "garbage",
            good + good,
            good[:-1],
            "\ufeff" + good,
            good.replace(":", "=", 1),
            good.replace('"', "'"),
            '{"amount": NaN}',
            '{"amount": Infinity}',
            '{"amount": -Infinity}',
            '{"amount": 1,}',
            "{amount: 1}",
            '{"amount": 01}',
            '{"amount": 0x10}',
            '{"amount": 1} // comment',
            "/* c */ " + good,
            '{"amount": "\\x41"}',
            '{"amount": "\\ud800"}',
            '{"owner": "\\ud800\\udc00x"}',
            self.deep_nesting(),
            "[" * 100_000,
            '{"a":' * 20_000,
        ]
        text = rng.choice(texts)
        encodings = [
            lambda t: t.encode("utf-8", errors="surrogatepass"),
            lambda t: t.encode("utf-16"),
            lambda t: t.encode("utf-32"),
            lambda t: t.encode("latin-1", errors="replace"),
            lambda t: t.encode("utf-8", errors="surrogatepass") + b"\x00",
            lambda t: b"\xff\xfe" + t.encode("utf-8", errors="surrogatepass"),
            lambda t: t.encode("utf-8", errors="surrogatepass").replace(b"1", b"\xc0\xb1"),
        ]
        weights = [10, 1, 1, 1, 1, 1, 1]
        body = rng.choices(encodings, weights=weights)[0](text)
        headers = self.garbage_authorization() if path == "/mode" else []
        return RawRequest(
            "raw_json", method, http_request(method, path, body, extra_headers=headers)
        )

    def media_type(self) -> RawRequest:
        method, path, valid = self.money_endpoint()
        text = self.mutated_object(valid)
        content_type = self.rng.choice(
            [
                None,
                "",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=utf-8",
                "application/json; charset=UTF-8",
                "application/json;charset=latin-1",
                "application/json; charset=utf-16",
                "APPLICATION/JSON",
                "application/json-patch+json",
                "application/problem+json",
                "application/jsonx",
                "application/json, text/plain",
                "json",
                "application/*",
                "*/*",
                "application/json; boundary=\u00e9",
                "application/json\u0000",
            ]
        )
        headers = self.garbage_authorization() if path == "/mode" else []
        body = text.encode("utf-8", errors="surrogatepass")
        data = http_request(
            method,
            path,
            body,
            content_type=content_type.encode("utf-8").decode("latin-1")
            if content_type is not None
            else None,
            extra_headers=headers,
        )
        return RawRequest("media_type", method, data)

    def oversized(self) -> RawRequest:
        method, path, _ = self.money_endpoint()
        size = self.rng.choice([BODY_LIMIT_BYTES + 1, BODY_LIMIT_BYTES * 2, 300_000])
        filler = self.rng.choice(["a", " ", "\u00e9"])
        body = ('{"owner": "' + filler * size + '"}').encode()
        if self.rng.random() < 0.3:  # JSON that is valid, with its size in whitespace
            body = b'{"amount": 1' + b" " * size + b"}"
        return RawRequest("oversized", method, http_request(method, path, body))

    def length_mismatch(self) -> RawRequest:
        method, path, valid = self.money_endpoint()
        text = self.mutated_object(valid)
        body = text.encode("utf-8", errors="surrogatepass")
        roll = self.rng.random()
        truncated = False
        if roll < 0.3:  # the body is cut short of what it announces
            announced: int | str = len(body) + self.rng.choice([1, 10, 1000, 10**6])
            truncated = True
        elif roll < 0.6:  # the announced length cuts the body
            announced = self.rng.randint(0, max(0, len(body) - 1))
        else:
            announced = self.rng.choice(
                ["-1", "abc", "1e3", "+5", " 5", "0x10", "99999999999999999999", "", "5, 5"]
            )
        data = http_request(method, path, body, content_length=announced)
        if roll > 0.9:  # two different Content-Length headers
            data = http_request(
                method,
                path,
                body,
                extra_headers=[("Content-Length", str(len(body) + 1))],
            )
        return RawRequest("length_mismatch", method, data, truncated_body=truncated)

    def paths(self) -> RawRequest:
        rng = self.rng
        account = rng.choice(self.account_ids)
        target = rng.choice(
            [
                "/accounts/0",
                "/accounts/-1",
                "/accounts/99999999999999999999999",
                "/accounts/999999999999999999",
                "/accounts/1%00",
                "/accounts/1%2F2",
                "/accounts/%31",
                f"/accounts/{account}/",
                f"/accounts/{account}//deposit",
                f"/accounts/{account}/deposit/",
                f"/accounts/0{account}",
                f"/accounts/{account}.0",
                f"/accounts/{account}/transactions/",
                f"/accounts/{account}/audit",
                f"/accounts/+{account}",
                f"/accounts/{account}%20",
                "//accounts",
                "/%61ccounts",
                "/ACCOUNTS",
                "/accounts/\u00e9",
                "/accounts/%ff",
                "/accounts/%",
                "/accounts/%zz",
                "/../../etc/passwd",
                "/accounts/..%2f..%2fetc%2fpasswd",
                "/transfers/0",
                "/transfers/999999",
                "/transactions/1",
                "/transactions/-5",
                "/audit/",
                "/mode/",
                "/healthz/x",
                "/" + "a" * rng.choice([100, 3000, 5000]),
                "/accounts/" + "9" * 3000,
                "*",
                "",
                "accounts",
                "http://127.0.0.1/accounts",
            ]
        )
        method = rng.choice(
            [
                "GET",
                "GET",
                "POST",
                "PUT",
                "DELETE",
                "PATCH",
                "HEAD",
                "OPTIONS",
                "TRACE",
                "CONNECT",
                "FOO",
                "get",
                "PROPFIND",
                "G\u00c9T",
                "GET\x00",
            ]
        )
        body = None
        if method in ("POST", "PUT", "PATCH"):
            body = b'{"amount": 1}'
        target_bytes = target.encode("utf-8")
        return RawRequest("paths", method, http_request(method, target_bytes, body))

    def query(self) -> RawRequest:
        rng = self.rng
        account = rng.choice(self.account_ids)
        base = rng.choice(["/accounts", f"/accounts/{account}/transactions"])
        cursor = "after" if base == "/accounts" else "before"
        parameters = rng.choice(
            [
                "limit=0",
                "limit=1",
                "limit=500",
                "limit=501",
                "limit=1e3",
                "limit=-1",
                "limit=",
                "limit",
                "limit=1&limit=2",
                "limit=%31",
                "limit=%00",
                "limit=\u0661",  # an Arabic-Indic digit: isdigit() but not ASCII
                "limit=99999999999999999999999",
                f"{cursor}=-1",
                f"{cursor}=0",
                f"{cursor}=1",
                f"{cursor}=999999999999999999",
                f"{cursor}=9999999999999999999",
                f"{cursor}=abc",
                f"{cursor}=1&{cursor}=2",
                "unknown=1",
                "limit=10&unknown",
                "&&&",
                "=",
                "%ff=%ff",
                "limit=1;after=2",
                "a=" + "b" * 3000,
            ]
        )
        method = rng.choice(["GET", "GET", "HEAD"])
        target = (base + "?" + parameters).encode("utf-8")
        return RawRequest("query", method, http_request(method, target, content_type=None))

    def headers(self) -> RawRequest:
        rng = self.rng
        request_id = rng.choice(
            [
                "with space",
                "caf\u00e9",
                "x" * 200,
                "x" * 201,
                "x" * 5000,
                "",
                "a\tb",
                "ok-id-" + str(rng.randrange(10**9)),
                "\U0001f4b0",
                "id\x7f",
            ]
        )
        echo = request_id if _printable_ascii(request_id) and len(request_id) <= 200 else None
        extra: list[tuple[str, str | bytes]] = [("X-Request-ID", request_id.encode("utf-8"))]
        if rng.random() < 0.3:
            extra.append(
                (
                    "Idempotency-Key",
                    rng.choice(
                        ["", " ", "k" * 300, "caf\u00e9", "key-" + str(rng.randrange(10**12))]
                    ).encode("utf-8"),
                )
            )
        if rng.random() < 0.2:
            extra.append(("X-Forwarded-For", "1.2.3.4, \u00e9"))
        if rng.random() < 0.5:
            method, path, valid = self.money_endpoint()
            text = self.mutated_object(valid)
            if path == "/mode":
                extra += self.garbage_authorization()
            data = http_request(
                method, path, text.encode("utf-8", "surrogatepass"), extra_headers=extra
            )
            return RawRequest("headers", method, data, echo_request_id=echo)
        path = rng.choice(["/healthz", "/accounts", "/audit", "/mode", "/nowhere"])
        method = "GET"
        if path == "/mode" and rng.random() < 0.5:
            method = "PUT"
            extra += self.garbage_authorization()
        return RawRequest(
            "headers",
            method,
            http_request(method, path, content_type=None, extra_headers=extra),
            echo_request_id=echo,
        )

    def framing(self) -> RawRequest:
        rng = self.rng
        deposit = f"/accounts/{rng.choice(self.account_ids)}/deposit"
        body = b'{"amount": 3}'
        choices: list[tuple[str, bytes]] = [
            ("GET", http_request("GET", "/accounts", version="HTTP/1.0", content_type=None)),
            ("GET", http_request("GET", "/accounts", host=False, content_type=None)),
            ("GET", http_request("GET", "/accounts", version="HTTP/2.0", content_type=None)),
            ("GET", http_request("GET", "/accounts", version="HTTP/1.1x", content_type=None)),
            ("GET", b"GET /accounts\r\n\r\n"),
            ("GET", b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            ("GET", b"GET  /healthz  HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            ("GET", b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n"),
            ("GET", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n"),
            ("GET", b"GET /healthz HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n"),
            ("GET", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n"),
            ("GET", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))),
            ("GET", b"\x00" * 64),
            ("POST", chunked_request(deposit, b"d\r\n" + body + b"\r\n0\r\n\r\n")),
            ("POST", chunked_request(deposit, b"d;ext=1\r\n" + body + b"\r\n0\r\n\r\n")),
            ("POST", chunked_request(deposit, b"ff\r\n" + body)),  # ends inside the chunk
            *(
                ("POST", chunked_request(deposit, broken))
                for broken in MALFORMED_CHUNKED_BODIES.values()
            ),
            (
                "POST",  # both framings: a smuggling attempt
                http_request(
                    "POST",
                    deposit,
                    b"d\r\n" + body + b"\r\n0\r\n\r\n",
                    extra_headers=[("Transfer-Encoding", "chunked")],
                ),
            ),
            (
                "POST",
                http_request("POST", deposit, body, extra_headers=[("Transfer-Encoding", "gzip")]),
            ),
            (
                "POST",
                http_request("POST", deposit, body, extra_headers=[("Content-Encoding", "gzip")]),
            ),
            (
                "POST",
                http_request("POST", deposit, body, extra_headers=[("Expect", "100-continue")]),
            ),
        ]
        method, data = rng.choice(choices)
        return RawRequest("framing", method, data)


def chunked_request(path: str, chunked_body: bytes) -> bytes:
    """A POST whose body is sent with Transfer-Encoding: chunked, as given (no Content-Length)."""
    return http_request(
        "POST",
        path,
        chunked_body,
        content_length="",
        extra_headers=[("Transfer-Encoding", "chunked")],
    )


# Chunked bodies whose framing is broken after the request head was accepted:
# gunicorn finds out only while the service reads the body.
MALFORMED_CHUNKED_BODIES = {
    "chunk size not hex": b'zz\r\n{"amount": 3}\r\n0\r\n\r\n',
    "negative chunk size": b'-1\r\n{"amount": 3}\r\n0\r\n\r\n',
    "chunk without its CRLF": b'd\r\n{"amount": 3}XX0\r\n\r\n',
    "forbidden trailer field": b'd\r\n{"amount": 3}\r\n0\r\nTrailer: x\r\n\r\n',
    "chunk size of 21 hex digits": b'fffffffffffffffffffff\r\n{"amount": 3}\r\n0\r\n\r\n',
}


def _printable_ascii(text: str) -> bool:
    return bool(text) and all("\x21" <= character <= "\x7e" for character in text)
