"""The benchmark's ceiling: a minimal Flask JSON echo app under gunicorn.

    python -m loadtest.echo_app --bind 127.0.0.1:8001 --workers 2 --threads 8

`POST /echo` parses the JSON body and answers it as JSON with 201: the same
framework work as a deposit (routing, JSON in, JSON out, gunicorn gthread)
minus the bank. `GET /healthz` and `GET /readyz` answer 200. Gunicorn is configured like
`bankrace serve` (gthread workers, the same timeouts and keep-alive), so the
ratio of a bank figure to this one measures what the bank itself costs. Each
worker prints `echo: worker <pid> ready` when it accepts, like the service.

It must not import `service`: the benchmark treats the service as a black box.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flask import Flask, Response, jsonify, request
from gunicorn.app.base import BaseApplication

# The values `bankrace serve` runs with (service/cli.py), repeated here on purpose.
GUNICORN_TIMEOUT_SECONDS = 30
GUNICORN_GRACEFUL_TIMEOUT_SECONDS = 10
GUNICORN_KEEPALIVE_SECONDS = 5
BODY_LIMIT_BYTES = 64 * 1024


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = BODY_LIMIT_BYTES

    @app.post("/echo")
    def echo() -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify({"code": "malformed_json"}), 400
        return jsonify(body), 201

    @app.get("/healthz")
    @app.get("/readyz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app


def _announce_worker_ready(worker: Any) -> None:
    print(f"echo: worker {worker.pid} ready", file=sys.stderr, flush=True)


class EchoServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, bind: str, workers: int, threads: int) -> None:
        self.echo_settings: dict[str, Any] = {
            "bind": [bind],
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "timeout": GUNICORN_TIMEOUT_SECONDS,
            "graceful_timeout": GUNICORN_GRACEFUL_TIMEOUT_SECONDS,
            "keepalive": GUNICORN_KEEPALIVE_SECONDS,
            # Each worker its own SO_REUSEPORT socket, as `bankrace serve` runs them: on one
            # shared socket a burst of kept-alive connections can all go to one worker, and an
            # echo running on half its cores would flatter every ratio to it.
            "reuse_port": workers > 1,
            "errorlog": "-",
            "proc_name": "bankrace-echo",
            "control_socket_disable": True,
            "post_worker_init": _announce_worker_ready,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.echo_settings.items():
            if key in self.cfg.settings:  # older gunicorn lacks newer settings
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.echo_app", description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:8001")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    arguments = parser.parse_args(argv)
    EchoServer(arguments.bind, arguments.workers, arguments.threads).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
