"""The Race tab: the race, live, in Locust's web UI — on Locust's own Flask app.

`install(environment, process)` (called by the locustfile on Locust's `init`)
adds, when this process serves the web UI:
- `GET /race`: the page (a static file: no token, no data in it), its script
  and style sheet under `/race/static/` (no CDN: it works offline);
- `GET /race/data`: the current view as JSON; the page polls it twice a second;
- `POST /race/mode` `{"lock_mode": ..., "race_window_ms": ...}`: this process
  calls the service's `PUT /mode` with the admin token from its own
  environment (`BANK_ADMIN_TOKEN`), so the token never reaches the page;
- a "Race" tab in Locust's own tab bar (Locust's extended tabs: a table of the
  hot accounts, refreshed with Locust's statistics) and a link to `/race` in
  its "Download Data" tab.

Who does what: the process with the web UI (the only one, or the master) polls
the service's per-account audits, `/mode` and `/audit` in a greenlet and keeps
the last view and the chart's history; the page only reads that. Workers send
their tally and operations in flight to the master twice a second
(`bank_live`); the arithmetic is `loadtest.race_live`. Over HTTP only: this
never imports `service`.

Its reads carry the client token of the locustfile's `--bank-token`
(BANK_CLIENT_TOKEN); GET /mode and GET /audit refused 403 (BANK_ADMIN_ONLY_READS)
are asked again with the admin token, or shown as unavailable without one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import requests
from flask import Response, request, send_from_directory
from gevent.event import Event
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.bank_http import BankError, admin_read, check_authorized
from loadtest.client_token import ADMIN_TOKEN_VARIABLE, admin_token, bearer, locust_token
from loadtest.lock_modes import UNSAFE_MODES, explain_mode
from loadtest.race_live import (
    History,
    InFlight,
    LiveSample,
    merged,
    race_accounts,
    race_totals,
    server_counts,
)
from loadtest.tally import Tally

logger = logging.getLogger("bankrace.race_view")

STATIC_DIRECTORY = Path(__file__).resolve().parent / "race_static"
# Bounds on every wait (DESIGN: put a limit on everything).
POLL_INTERVAL_SECONDS = 0.5  # the view is refreshed at least this often while a run goes on
BANK_AUDIT_INTERVAL_SECONDS = 5.0  # GET /audit scans the whole journal: less often
REQUEST_TIMEOUT_SECONDS = 2.0
MODE_CHANGE_TIMEOUT_SECONDS = 10.0  # above the service's lock wait (5 s by default)
MODE_CHANGE_ATTEMPTS = 3  # PUT /mode again after a 503 with Retry-After, at most this often
WORKER_REPORT_INTERVAL_SECONDS = 0.5
WORKER_REPORT_WAIT_SECONDS = 2.0  # the master waits this long for samples newer than its reads
WORKER_SILENT_SECONDS = 3.0  # a worker silent this long is not waited for
WAIT_STEP_SECONDS = 0.05
RACE_WINDOW_MS_LIMIT = 5000  # DESIGN §2
CHART_POINTS_LIMIT = 600  # points sent to the page: the last five minutes
TAB_KEY = "race"
TAB_COLUMNS = (
    ("account", "Account"),
    ("expected", "Expected"),
    ("stored", "Stored"),
    ("journal", "Journal"),
    ("lost", "Lost updates"),
    ("breaks", "Chain breaks"),
    ("overdraft", "Overdraft"),
    ("holds", "Hold anomalies"),
)


class RaceMonitor:
    """What the web UI's process knows of the race: the last view and its history."""

    def __init__(
        self,
        environment: Environment,
        process: Any,
        admin_token: str | None,
        client_token: str | None = None,
    ) -> None:
        self.environment = environment
        self.process = process  # the locustfile's LoadTestProcess
        self.admin_token = admin_token
        self.session = requests.Session()
        self.session.headers.update(bearer(client_token))
        self.worker_samples: dict[str, LiveSample] = {}
        self.history = History()
        self.mode: dict[str, Any] = {}
        self.bank_audit: dict[str, Any] | None = None
        self.server_metrics: dict[str, Any] | None = None  # from GET /metrics
        self.bank_audit_read_at = 0.0
        self.view: dict[str, Any] = {}
        self.error: str | None = None
        self.updated_at: float | None = None
        self.wake = Event()

    # --- where the tally comes from ----------------------------------------------------

    @property
    def distributed(self) -> bool:
        return isinstance(self.environment.runner, MasterRunner)

    def host(self) -> str:
        setup = self.process.setup
        return str((setup.host if setup is not None else "") or self.environment.host or "")

    def running(self) -> bool:
        runner = self.environment.runner
        return runner is not None and runner.state in ("spawning", "running")

    def sample(self) -> LiveSample:
        """The run's tally and operations in flight, now (merged over the workers)."""
        run_id = str(self.process.run_id)
        if not self.distributed:
            return LiveSample.of(self.process.tally, self.process.flight, time.time())
        if self.process.report is not None:  # stopped: the workers' final tallies
            final = Tally(run_id=run_id, reporters=0)
            for tally in self.process.worker_tallies.values():
                final.merge(tally)
            return LiveSample.of(final, InFlight(), time.time())
        current = [s for s in self.worker_samples.values() if s.run_id == run_id]
        return merged(current, run_id, time.time())

    def sample_after(self, moment: float) -> LiveSample | None:
        """A sample taken after `moment`; None when a worker did not report in time."""
        if not self.distributed or self.process.report is not None or not self.running():
            return self.sample()
        deadline = time.monotonic() + WORKER_REPORT_WAIT_SECONDS
        while time.monotonic() < deadline:
            if all(
                sample.taken_at >= moment
                for sample in self.worker_samples.values()
                if sample.run_id == self.process.run_id
                and sample.taken_at > moment - WORKER_SILENT_SECONDS
            ):
                return self.sample()
            gevent.sleep(WAIT_STEP_SECONDS)
        return None

    def on_worker_sample(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        sample = LiveSample.from_dict(msg.data)
        if sample.run_id == self.process.run_id:
            self.worker_samples[msg.node_id] = sample

    # --- reading the service -----------------------------------------------------------

    def raw_get(self, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        url = self.host() + path
        return self.session.get(url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)

    def get(self, path: str, headers: dict[str, str] | None = None) -> requests.Response:
        response = self.raw_get(path, headers)
        check_authorized(response)
        return response

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        response.raise_for_status()
        return response.json()

    def admin_read(self, path: str) -> requests.Response | None:
        """GET /mode, /audit or /metrics; again with the admin token when refused."""
        return admin_read(lambda headers: self.raw_get(path, headers), bearer(self.admin_token))

    def get_admin_read(self, path: str) -> Any | None:
        """GET /mode or /audit as JSON; None while only the admin may read it."""
        response = self.admin_read(path)
        if response is None:
            return None
        response.raise_for_status()
        return response.json()

    def read_audit(self, account_id: int) -> dict[str, Any] | None:
        try:
            return dict(self.get_json(f"/accounts/{account_id}/audit"))
        except (requests.RequestException, BankError, ValueError) as error:
            self.error = f"could not read the audit of account {account_id}: {error}"
            return None

    def read_mode_and_bank_audit(self) -> None:
        self.mode = dict(self.get_admin_read("/mode") or {})
        if time.monotonic() - self.bank_audit_read_at >= BANK_AUDIT_INTERVAL_SECONDS:
            self.bank_audit_read_at = time.monotonic()
            audit = self.get_admin_read("/audit")
            self.bank_audit = None if audit is None else dict(audit)
        self.server_metrics = self.read_metrics()

    def read_metrics(self) -> dict[str, Any] | None:
        """The server's own counts from GET /metrics (None where it has none)."""
        try:
            response = self.admin_read("/metrics")  # the admin's under BANK_ADMIN_ONLY_READS
        except (requests.RequestException, BankError):
            return None
        if response is None or response.status_code != 200:
            return None
        return server_counts(response.text)

    # --- the view ----------------------------------------------------------------------

    def poll_once(self) -> None:
        self.error = None
        try:
            self.read_mode_and_bank_audit()
        except (requests.RequestException, BankError, ValueError) as error:
            self.error = f"cannot read the service at {self.host() or '(no host)'}: {error}"
            return
        setup = self.process.setup
        if setup is None:
            self.updated_at = time.time()
            return
        before = self.sample()
        audits = {account_id: self.read_audit(account_id) for account_id in setup.account_ids}
        read_at = time.time()
        after = self.sample_after(read_at)
        if after is None:
            self.error = "waiting for the workers' tallies"
            return
        accounts = race_accounts(setup, before, after, audits)
        totals = race_totals(accounts, before)
        if self.history.run_id != setup.run_id:
            self.history = History(setup.run_id)
        self.history.add(read_at, self.mode, totals)
        self.view = {
            "run": {
                "run_id": setup.run_id,
                "scenario": setup.scenario,
                "amount": setup.amount,
                "accounts": len(setup.account_ids),
            },
            "accounts": [asdict(account) for account in accounts],
            "totals": totals,
        }
        self.updated_at = time.time()

    def run(self) -> None:
        """Poll for ever (the greenlet dies with the process); a failure is shown, not fatal."""
        while True:
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception as error:  # the view must outlive any one bad answer
                logger.exception("race view: polling failed")
                self.error = f"{type(error).__name__}: {error}"
            elapsed = time.monotonic() - started
            self.wake.wait(timeout=max(POLL_INTERVAL_SECONDS - elapsed, WAIT_STEP_SECONDS))
            self.wake.clear()

    def data(self) -> dict[str, Any]:
        """Everything the page shows (never the token)."""
        runner = self.environment.runner
        setup = self.process.setup
        view = self.view if setup is not None and self.history.run_id == setup.run_id else {}
        report = self.process.report
        return {
            "updated_at": self.updated_at,
            "error": self.error,
            "host": self.host(),
            "runner": {
                "state": getattr(runner, "state", "unknown"),
                "user_count": getattr(runner, "user_count", 0),
                "workers": len(self.worker_samples) if self.distributed else 0,
            },
            "mode": {
                "lock_mode": self.mode.get("lock_mode"),
                "race_window_ms": self.mode.get("race_window_ms"),
                "unsafe_modes_allowed": self.mode.get("unsafe_modes_allowed"),
            },
            "modes": [
                {"name": name, "explanation": explain_mode(name), "unsafe": name in UNSAFE_MODES}
                for name in self.mode.get("modes", [])
            ],
            "mode_control": bool(self.admin_token),
            "run": view.get("run"),
            "accounts": view.get("accounts", []),
            "totals": view.get("totals"),
            "history": self.history.to_list()[-CHART_POINTS_LIMIT:] if view else [],
            "segments": self.history.segments() if view else [],
            "server_audit": self.bank_audit,
            "server_metrics": self.server_metrics,
            "report": None
            if report is None or report.run_id != self.process.run_id
            else {
                "verdict": report.verdict,
                "problems": report.problems,
                "lost_updates": report.lost_updates,
            },
        }

    def tab_rows(self) -> list[dict[str, Any]]:
        """The rows of the Race tab in Locust's own tab bar."""
        view = self.data()
        rows = [
            {
                "account": f"#{account['account_id']}",
                "expected": account["expected"],
                "stored": account["stored"],
                "journal": account["journal"],
                "lost": account["lost_updates"],
                "breaks": account["chain_breaks"],
                "overdraft": account["overdraft"],
                "holds": account["hold_anomalies"],
            }
            for account in view["accounts"]
        ]
        totals = view["totals"]
        if totals is not None:
            rows.append(
                {
                    "account": f"all ({view['mode']['lock_mode']}): chart at /race",
                    "expected": sum(account["expected"] for account in view["accounts"]),
                    "stored": sum(account["stored"] or 0 for account in view["accounts"]),
                    "journal": sum(account["journal"] or 0 for account in view["accounts"]),
                    "lost": totals["lost_updates"],
                    "breaks": totals["chain_breaks"],
                    "overdraft": totals["overdraft_money"],
                    "holds": (totals["holds"] or {}).get("anomalies", 0),
                }
            )
        return rows

    # --- changing the mode -------------------------------------------------------------

    def change_mode(self, body: dict[str, Any]) -> Response:
        """PUT /mode on the service with the admin token; its last answer goes back as it is.

        A mode change is a write: in `locked` on SQLite it queues for the one
        write lock behind every request's race window, and may run out of lock
        wait (503 with Retry-After, nothing changed). It is tried again, bounded.
        """
        attempts = 0
        while True:
            attempts += 1
            try:
                answer = self.session.put(
                    self.host() + "/mode",
                    json=body,
                    headers={"Authorization": f"Bearer {self.admin_token}"},
                    timeout=MODE_CHANGE_TIMEOUT_SECONDS,
                )
            except requests.RequestException as error:
                return problem(502, "service_unreachable", f"PUT /mode failed: {error}")
            busy = answer.status_code == 503 and "Retry-After" in answer.headers
            if not busy or attempts == MODE_CHANGE_ATTEMPTS:
                break
        self.wake.set()  # show the new mode at once
        return Response(
            answer.content,
            answer.status_code,
            content_type=answer.headers.get("Content-Type", "application/json"),
            headers={"X-Mode-Change-Attempts": str(attempts)},
        )


# --- the routes ------------------------------------------------------------------------


def problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": code.replace("_", " "), "status": status}
    body |= {"detail": detail, "code": code, **extra}
    return Response(json.dumps(body), status, content_type="application/problem+json")


def mode_change_errors(body: Any) -> Response | dict[str, Any]:
    """The body of POST /race/mode, or the problem that refuses it."""
    if not isinstance(body, dict):
        return problem(400, "malformed_json", "the body must be a JSON object")
    errors = [
        {"field": name, "message": "unknown field"}
        for name in body
        if name not in ("lock_mode", "race_window_ms")
    ]
    if "lock_mode" in body and not isinstance(body["lock_mode"], str):
        errors.append({"field": "lock_mode", "message": "must be a string"})
    window = body.get("race_window_ms", 0)
    if isinstance(window, bool) or not isinstance(window, int):
        errors.append({"field": "race_window_ms", "message": "must be an integer"})
    elif not 0 <= window <= RACE_WINDOW_MS_LIMIT:
        errors.append(
            {"field": "race_window_ms", "message": f"must be 0 to {RACE_WINDOW_MS_LIMIT}"}
        )
    if not body:
        errors.append({"field": "lock_mode", "message": "give lock_mode, race_window_ms or both"})
    if errors:
        return problem(422, "validation_error", "the mode change is invalid", errors=errors)
    return body


def cross_site() -> bool:
    """A browser request from another site (Locust's app answers CORS for any origin)."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        return True
    return request.headers.get("Sec-Fetch-Site") == "cross-site"


def add_routes(environment: Environment, monitor: RaceMonitor) -> None:
    web_ui = environment.web_ui
    assert web_ui is not None
    app = web_ui.app
    assert app is not None  # Locust builds its Flask app with the web UI
    guarded: Callable[[Callable[..., Any]], Callable[..., Any]] = web_ui.auth_required_if_enabled

    def page() -> Response:
        return no_cache(send_from_directory(STATIC_DIRECTORY, "race.html"))

    def static(filename: str) -> Response:
        return no_cache(send_from_directory(STATIC_DIRECTORY, filename))

    def data() -> Response:
        return no_cache(Response(json.dumps(monitor.data()), content_type="application/json"))

    def mode() -> Response:
        if request.method != "POST":
            return problem(405, "method_not_allowed", "POST a JSON body", allow="POST")
        if cross_site():
            return problem(403, "forbidden", "mode changes come from this page only")
        if not monitor.admin_token:
            detail = f"this Locust process has no {ADMIN_TOKEN_VARIABLE}: mode changes are off"
            return problem(403, "forbidden", detail)
        if not request.is_json:
            return problem(415, "unsupported_media_type", "send Content-Type: application/json")
        checked = mode_change_errors(request.get_json(silent=True))
        return checked if isinstance(checked, Response) else monitor.change_mode(checked)

    app.add_url_rule("/race", "bankrace_race", guarded(page))
    app.add_url_rule("/race/static/<path:filename>", "bankrace_race_static", guarded(static))
    app.add_url_rule("/race/data", "bankrace_race_data", guarded(data))
    app.add_url_rule(
        "/race/mode", "bankrace_race_mode", guarded(mode), methods=["GET", "POST", "PUT"]
    )


def no_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def add_locust_tab(environment: Environment, monitor: RaceMonitor) -> None:
    """Locust's extended tab: a table in its own tab bar, filled in with its statistics."""
    web_ui = environment.web_ui
    assert web_ui is not None
    web_ui.template_args.setdefault("extended_tabs", []).append({"title": "Race", "key": TAB_KEY})
    web_ui.template_args.setdefault("extended_tables", []).append(
        {"key": TAB_KEY, "structure": [{"key": key, "title": title} for key, title in TAB_COLUMNS]}
    )
    web_ui.template_args.setdefault("extended_csv_files", []).append(
        {"href": "./race", "title": "Race view: live chart and lock-mode switch"}
    )

    def add_race_rows(response: Response) -> Response:
        if not request.path.endswith("/stats/requests") or not response.is_json:
            return response
        statistics = response.get_json(silent=True)
        if isinstance(statistics, dict):
            extended = statistics.setdefault("extended_stats", [])
            extended.append({"key": TAB_KEY, "data": monitor.tab_rows()})
            response.set_data(json.dumps(statistics))
        return response

    assert web_ui.app is not None
    web_ui.app.after_request(add_race_rows)


def report_to_master(environment: Environment, process: Any) -> None:
    """Worker: send this process's tally and operations in flight, twice a second."""
    while True:
        gevent.sleep(WORKER_REPORT_INTERVAL_SECONDS)
        runner = environment.runner
        if process.setup is None or runner is None:
            continue
        sample = LiveSample.of(process.tally, process.flight, time.time())
        try:
            runner.send_message("bank_live", sample.to_dict())
        except Exception:  # the master went away: it will say so itself
            logger.debug("could not send the live tally", exc_info=True)


def install(environment: Environment, process: Any) -> None:
    """Wire the live view into this Locust process (see the module docstring)."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        gevent.spawn(report_to_master, environment, process)
        return
    if environment.web_ui is None:  # headless: nobody to show it to
        if isinstance(runner, MasterRunner):
            runner.register_message("bank_live", lambda *_args, **_kwargs: None)
        return
    monitor = RaceMonitor(
        environment, process, admin_token(), locust_token(environment.parsed_options)
    )
    if isinstance(runner, MasterRunner):
        runner.register_message("bank_live", monitor.on_worker_sample)
    add_routes(environment, monitor)
    add_locust_tab(environment, monitor)
    gevent.spawn(monitor.run)
