"""Container health probe: GET /healthz on the address the service binds (BANK_BIND).

The slim Python image has no curl, so Docker's HEALTHCHECK runs this stdlib-only script.
Exit 0 when /healthz answers 200 within the timeout, 1 otherwise (with one line saying why).
It must not import the service: a probe that fails on an import error would blame the wrong
thing, and it must stay cheap enough to run every few seconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_BIND = "127.0.0.1:8000"
PROBE_TIMEOUT_SECONDS = 2.0
WILDCARD_HOSTS = {"0.0.0.0", "", "[::]", "::"}


def health_url(bind: str) -> str:
    """The /healthz URL for a gunicorn bind address HOST:PORT (wildcards probe loopback)."""
    host, separator, port = bind.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"BANK_BIND={bind!r} is not HOST:PORT; cannot probe it")
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/healthz"


def probe(url: str, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> str | None:
    """None when healthy, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"{url} answered {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url} unreachable: {error}"


def main(argv: list[str]) -> int:
    try:
        url = argv[1] if len(argv) > 1 else health_url(os.environ.get("BANK_BIND", DEFAULT_BIND))
    except ValueError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    reason = probe(url)
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
