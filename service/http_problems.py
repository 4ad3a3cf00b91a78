"""gunicorn's own refusals, written as the service's problems (application/problem+json).

gunicorn answers some requests before the application sees them: a request
line over its limit (414), too many or too large header fields (431), a
malformed request line, header or chunked framing (400). Its pages are
text/html, which breaks DESIGN §3 (every error is a problem) and the
OpenAPI document's `default` answer (schemathesis found a 414 on
`GET /balances` with a long id list). `write_problem` has the signature of
`gunicorn.util.write_error`, which the worker replaces with it
(service/gunicorn_worker.py).

Nothing here knows Flask: these answers are written to the socket before
any request exists, so they carry no X-Request-ID and an `instance` of null.
"""

from __future__ import annotations

import json
import socket

from gunicorn.util import write_nonblock

from service.api.headers import API_CONTENT_SECURITY_POLICY, NO_STORE, SECURITY_HEADERS

# gunicorn's statuses (gunicorn.workers.base.Worker.handle_error) and the code
# each gets; the OpenAPI document lists them under every operation's `default`.
GUNICORN_PROBLEM_CODES = {
    400: "malformed_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}
# gunicorn's message may quote the client's bytes; keep the echo short.
MAX_DETAIL_CHARACTERS = 200


def problem_response(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer (head and body) closing the connection."""
    code = GUNICORN_PROBLEM_CODES.get(status, "malformed_request")
    body = json.dumps(
        {
            "type": f"urn:bankrace:problem:{code}",
            "title": code.replace("_", " ").capitalize(),
            "status": status,
            "detail": detail[:MAX_DETAIL_CHARACTERS],
            "code": code,
            "instance": None,
        }
    ).encode()
    reason = reason.encode("latin-1", "replace").decode("latin-1")
    # The same headers as every answer of the app (service/api/headers.py); no Server banner.
    headers = {
        "Connection": "close",
        "Content-Type": "application/problem+json",
        "Content-Length": str(len(body)),
        **SECURITY_HEADERS,
        "Content-Security-Policy": API_CONTENT_SECURITY_POLICY,
        "Cache-Control": NO_STORE,
    }
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    )
    return head.encode("latin-1") + body


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error`, answering a problem instead of an HTML page."""
    write_nonblock(sock, problem_response(status_int, reason, mesg))
