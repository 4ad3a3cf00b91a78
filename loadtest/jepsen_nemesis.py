"""The nemesis of the bank workload: faults injected on a schedule, each written to the history.

Fault kinds, taken in turn, one every `interval_seconds`:
- `kill`: SIGKILL to one gunicorn worker (the master starts another);
- `pause`: SIGSTOP to one worker, SIGCONT `pause_seconds` later (requests it
  holds hang, locks it holds are held: the others wait, bounded by the lock
  timeout);
- `cut`: break every connection of a TcpProxy between the service and its
  database and refuse new ones, restored `cut_seconds` later (PostgreSQL).

Workers are found as the children of the gunicorn master (`master_pid`),
read from /proc (Linux). The nemesis only signals processes of the server it
was given, never anything found by name. `stop_and_heal` ends the schedule,
resumes a paused worker and restores the proxy, so the final read can run.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from loadtest.jepsen_history import NEMESIS, History
from loadtest.tcp_proxy import TcpProxy

FAULTS = ("kill", "pause", "cut")
PROCESS_FAULTS = ("kill", "pause")
DEFAULT_INTERVAL_SECONDS = 1.0
DEFAULT_PAUSE_SECONDS = 0.5
DEFAULT_CUT_SECONDS = 0.5
JOIN_SECONDS = 10.0
PROC = Path("/proc")


def child_pids(parent_pid: int) -> list[int]:
    """The live children of a process (Linux /proc), in pid order."""
    children = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (command) state ppid ...": the command may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == parent_pid:
            children.append(int(entry.name))
    return sorted(children)


def available_faults(master_pid: int | None, proxy: TcpProxy | None) -> list[str]:
    faults = []
    if master_pid is not None and PROC.is_dir():
        faults += list(PROCESS_FAULTS)
    if proxy is not None:
        faults.append("cut")
    return faults


class Nemesis:
    def __init__(
        self,
        faults: Sequence[str],
        *,
        master_pid: int | None = None,
        proxy: TcpProxy | None = None,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        pause_seconds: float = DEFAULT_PAUSE_SECONDS,
        cut_seconds: float = DEFAULT_CUT_SECONDS,
        seed: int | None = None,
    ) -> None:
        possible = available_faults(master_pid, proxy)
        impossible = [fault for fault in faults if fault not in possible]
        if impossible:
            raise ValueError(
                f"fault(s) {', '.join(impossible)} need "
                + (
                    "a gunicorn master pid (Linux) "
                    if set(impossible) & set(PROCESS_FAULTS)
                    else ""
                )
                + ("a TCP proxy in front of the database" if "cut" in impossible else "")
            )
        self.faults = list(faults)
        self.master_pid = master_pid
        self.proxy = proxy
        self.interval_seconds = interval_seconds
        self.pause_seconds = pause_seconds
        self.cut_seconds = cut_seconds
        self._rng = random.Random(seed)  # nosec B311  # seeded to replay a run, not a secret
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused: int | None = None
        self._history: History | None = None

    def start(self, history: History) -> None:
        self._history = history
        if self.faults:
            self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
            self._thread.start()

    def stop_and_heal(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        self._resume()
        if self.proxy is not None:
            self.proxy.restore()

    def _run(self) -> None:
        for fault in itertools.cycle(self.faults):
            if self._stop.wait(self.interval_seconds):
                return
            getattr(self, f"_{fault}")()

    def _record(self, function: str, value: object) -> None:
        assert self._history is not None
        self._history.append(NEMESIS, "info", function, value)

    def _worker(self) -> int | None:
        assert self.master_pid is not None
        workers = child_pids(self.master_pid)
        return self._rng.choice(workers) if workers else None

    def _kill(self) -> None:
        pid = self._worker()
        if pid is None:  # every worker is being replaced: nothing to kill this time
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._record("kill", {"pid": pid})

    def _pause(self) -> None:
        pid = self._worker()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        self._paused = pid
        self._record("pause", {"pid": pid})
        self._stop.wait(self.pause_seconds)
        self._resume()

    def _resume(self) -> None:
        pid, self._paused = self._paused, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        self._record("resume", {"pid": pid})

    def _cut(self) -> None:
        assert self.proxy is not None
        self.proxy.cut()
        self._record("cut", {"proxy_port": self.proxy.port})
        self._stop.wait(self.cut_seconds)
        self.proxy.restore()
        self._record("restore", {"proxy_port": self.proxy.port})
