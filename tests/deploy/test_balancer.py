"""The nginx template's money rules, proved against a real nginx and stub upstreams.

No service and no database: one stub upstream reads each request and hangs up without
answering (a replica dying mid-request), a backup stub answers. A GET must be retried on the
backup; a POST that reached the first replica must not be (it may have moved money); a POST
that could not be delivered at all may be. Also: an X-Request-ID the replicas accept passes
through and any other is replaced by nginx's own, and failures answer problem+json.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from service.api.request_log import REQUEST_ID_PATTERN
from service.cli import GUNICORN_KEEPALIVE_SECONDS
from tests.deploy.balancer import (
    NGINX_TEMPLATE_PATH,
    TEMPLATE_VARIABLES,
    Balancer,
    placeholders,
    render,
)
from tests.support.servers import free_port

REQUEST_TIMEOUT_SECONDS = 10


@dataclass
class Seen:
    """What a stub upstream received: (method, path, headers) per request."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((method, path, headers))

    def methods(self) -> list[str]:
        with self.lock:
            return [method for method, _path, _headers in self.requests]


def hang_up_handler(seen: Seen) -> type[socketserver.StreamRequestHandler]:
    class HangUp(socketserver.StreamRequestHandler):
        """Reads one request's head, then closes the connection without a response."""

        def handle(self) -> None:
            request_line = self.rfile.readline().decode("latin-1")
            headers: dict[str, str] = {}
            while (line := self.rfile.readline().decode("latin-1")) not in ("\r\n", "\n", ""):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            method, path, *_ = [*request_line.split(), "", ""]
            seen.add(method, path, headers)

    return HangUp


def answer_handler(seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Answer(BaseHTTPRequestHandler):
        """Answers every request with JSON, over HTTP/1.1 keep-alive like gunicorn."""

        protocol_version = "HTTP/1.1"

        def respond(self, status: int) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if length:
                self.rfile.read(length)
            seen.add(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            body = json.dumps({"served_by": "backup"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            # Like a replica, which answers with the request id it was sent (when it accepts it).
            self.send_header("X-Request-ID", self.headers.get("X-Request-ID", ""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.respond(200)

        def do_POST(self) -> None:
            self.respond(201)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Answer


@pytest.fixture
def stubs() -> Iterator[tuple[socketserver.TCPServer, Seen, ThreadingHTTPServer, Seen]]:
    hang_up_seen, answer_seen = Seen(), Seen()
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    hang_up = socketserver.ThreadingTCPServer(("127.0.0.1", 0), hang_up_handler(hang_up_seen))
    answer = ThreadingHTTPServer(("127.0.0.1", 0), answer_handler(answer_seen))
    threads = [
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        for server in (hang_up, answer)
    ]
    for thread in threads:
        thread.start()
    try:
        yield hang_up, hang_up_seen, answer, answer_seen
    finally:
        for server in (hang_up, answer):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)


def port_of(server: socketserver.BaseServer) -> int:
    return int(server.server_address[1])  # type: ignore[index]


@pytest.fixture
def balancer_over_hang_up(tmp_path: Path, stubs: tuple) -> Iterator[tuple[Balancer, Seen, Seen]]:
    hang_up, hang_up_seen, answer, answer_seen = stubs
    # max_fails=0: the dying replica is tried every time instead of being benched for 10 s.
    servers = [f"127.0.0.1:{port_of(hang_up)} max_fails=0", f"127.0.0.1:{port_of(answer)} backup"]
    with Balancer(workdir=tmp_path, upstream_servers=servers) as balancer:
        yield balancer, hang_up_seen, answer_seen


def test_template_placeholders_are_exactly_the_documented_ones() -> None:
    """Only BALANCER_* are substituted; nginx's own $variables are left for nginx."""
    template = NGINX_TEMPLATE_PATH.read_text()
    assert placeholders(template) == set(TEMPLATE_VARIABLES)
    rendered = render(template, dict.fromkeys(TEMPLATE_VARIABLES, "X"))
    assert placeholders(rendered) == set()
    assert "$bankrace_request_id" in rendered and "$proxy_add_x_forwarded_for" in rendered
    # The image substitutes every variable of its environment (HOSTNAME, PATH, ...): nginx's
    # own variables are lower case, so none can be mistaken for one.
    nginx_variables = set(re.findall(r"\$\{?([A-Za-z_]\w*)", template)) - set(TEMPLATE_VARIABLES)
    assert nginx_variables and all(name == name.lower() for name in nginx_variables)


def test_balancer_drops_idle_replica_connections_before_the_replica_does() -> None:
    """nginx's idle timeout for its connections to the replicas is below the replicas' own:
    the other way round, nginx could send a request on a connection the replica is closing at
    that moment, count the error against the replica and send it nothing for 10 s. (The
    compose worker-split test once saw api-1 get no request in a whole burst with nginx at
    60 s and the replicas at 5 s; this is the known cause of such a gap.)"""
    template = NGINX_TEMPLATE_PATH.read_text()
    upstream = re.search(r"upstream bankrace_api \{(.*?)\n\}", template, re.S)
    assert upstream is not None
    idle = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream.group(1), re.M)
    assert idle is not None, "the upstream's keepalive_timeout must be set (nginx default: 60 s)"
    assert int(idle.group(1)) < GUNICORN_KEEPALIVE_SECONDS


def test_rendered_template_is_valid_nginx(tmp_path: Path) -> None:
    """`nginx -t` accepts the template rendered for two loopback replicas."""
    Balancer(workdir=tmp_path, upstream_servers=["127.0.0.1:1", "127.0.0.1:2"]).check()


def test_get_is_retried_on_the_next_replica(balancer_over_hang_up: tuple) -> None:
    """A GET whose replica hung up is answered by the next one: reads are safe to repeat."""
    balancer, hang_up_seen, answer_seen = balancer_over_hang_up
    response = requests.get(f"{balancer.url}/accounts/1", timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200
    assert response.json() == {"served_by": "backup"}
    assert hang_up_seen.methods() == ["GET"]
    assert answer_seen.methods() == ["GET"]


def test_post_that_reached_a_replica_is_never_sent_again(balancer_over_hang_up: tuple) -> None:
    """A deposit whose replica hung up mid-request is NOT replayed elsewhere (no double money)."""
    balancer, hang_up_seen, answer_seen = balancer_over_hang_up
    response = requests.post(
        f"{balancer.url}/accounts/1/deposit",
        json={"amount": 100},
        headers={"X-Request-ID": "deposit-once"},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-Request-ID"] == "deposit-once"
    problem = response.json()
    assert problem["status"] == 502 and problem["code"] == "bad_gateway"
    assert "before retrying" in problem["detail"]
    assert hang_up_seen.methods() == ["POST"]
    assert answer_seen.methods() == []


def test_post_that_could_not_be_delivered_goes_to_the_next_replica(
    tmp_path: Path, stubs: tuple
) -> None:
    """Connection refused means nothing happened, so even a POST may go to the next replica."""
    _hang_up, _hang_up_seen, answer, answer_seen = stubs
    servers = [f"127.0.0.1:{free_port()} max_fails=0", f"127.0.0.1:{port_of(answer)} backup"]
    with Balancer(workdir=tmp_path, upstream_servers=servers) as balancer:
        response = requests.post(
            f"{balancer.url}/accounts/1/deposit",
            json={"amount": 100},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
    assert response.status_code == 201
    assert answer_seen.methods() == ["POST"]


def test_request_id_and_forwarding_headers_reach_the_replica(tmp_path: Path, stubs: tuple) -> None:
    """X-Request-ID passes through as sent; without one nginx makes one; X-Forwarded-* set."""
    _hang_up, _hang_up_seen, answer, answer_seen = stubs
    with Balancer(workdir=tmp_path, upstream_servers=[f"127.0.0.1:{port_of(answer)}"]) as balancer:
        sent = requests.get(
            f"{balancer.url}/healthz",
            headers={"X-Request-ID": "client-chosen-id"},
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        generated = requests.get(f"{balancer.url}/healthz", timeout=REQUEST_TIMEOUT_SECONDS)
    assert sent.status_code == generated.status_code == 200
    (_, _, first), (_, _, second) = answer_seen.requests
    assert first["x-request-id"] == "client-chosen-id"
    assert re.fullmatch(r"[0-9a-f]{32}", second["x-request-id"])
    assert first["x-forwarded-for"] == "127.0.0.1"
    assert first["x-forwarded-proto"] == "http"
    assert first["host"] == f"127.0.0.1:{balancer.port}"
    assert first.get("connection", "") == ""  # upstream keep-alive needs no `Connection: close`


# Ids a client may send: the replica accepts the first three and refuses the others.
CLIENT_REQUEST_IDS = {
    "plain": "order-1234",
    "longest": "x" * 200,
    "punctuation": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "too-long": "x" * 201,
    "space": "order 1234",
    "tab": "order\t1234",
    "non-ascii": "caf\u00e9",
    "empty": "",
}
NGINX_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
LOGGED_REQUEST = re.compile(
    r'"GET /healthz\?case=(?P<case>[\w-]+) HTTP/1\.1" .* request_id=(?P<id>\S+) '
)


def unescaped(logged: str) -> str:
    """A value as nginx's access log writes it, `"` and `\\` as \\x22 and \\x5C, restored."""
    return re.sub(r"\\x([0-9A-F]{2})", lambda match: chr(int(match[1], 16)), logged)


def test_only_an_id_the_replica_accepts_passes_through(tmp_path: Path, stubs: tuple) -> None:
    """An id the replica would refuse is replaced by nginx's own in its log, upstream and reply.

    Otherwise the balancer would log the client's id and the replica one it made up, and
    the two logs would no longer share an id. The test holds nginx's rule against the
    replica's REQUEST_ID_PATTERN for every id sent.
    """
    _hang_up, _hang_up_seen, answer, answer_seen = stubs
    replies: dict[str, str] = {}
    with Balancer(workdir=tmp_path, upstream_servers=[f"127.0.0.1:{port_of(answer)}"]) as balancer:
        for case, request_id in CLIENT_REQUEST_IDS.items():
            response = requests.get(
                f"{balancer.url}/healthz?case={case}",
                headers={"X-Request-ID": request_id.encode("latin-1")},
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
            assert response.status_code == 200, case
            replies[case] = response.headers["X-Request-ID"]
    # Read once nginx has stopped: every access-log line is written by then.
    logged = {
        match["case"]: unescaped(match["id"])
        for match in map(LOGGED_REQUEST.search, balancer.read_logs().splitlines())
        if match
    }
    upstream = {
        path.removeprefix("/healthz?case="): headers["x-request-id"]
        for _method, path, headers in answer_seen.requests
    }
    for case, request_id in CLIENT_REQUEST_IDS.items():
        expected = request_id if REQUEST_ID_PATTERN.fullmatch(request_id) else None
        assert logged[case] == upstream[case] == replies[case], case
        if expected is None:
            assert NGINX_REQUEST_ID.fullmatch(logged[case]), (case, logged[case])
        else:
            assert logged[case] == expected, case
    accepted = {
        case for case, rid in CLIENT_REQUEST_IDS.items() if REQUEST_ID_PATTERN.fullmatch(rid)
    }
    assert accepted == {"plain", "longest", "punctuation"}
