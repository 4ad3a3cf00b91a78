"""A worker leaves what it loaded before serving out of every garbage collection.

Each full collection scanned the worker's whole startup heap (about 115,000
objects) under the GIL for 45-68 ms; when that worker's writer held the SQLite
writer lock meanwhile, every worker's deposits waited (docs/performance.md).
gunicorn's post_worker_init hook now freezes that heap: the app made before it
is no longer in any generation the collector scans, and what serving makes
afterwards still is. Run in a child interpreter, so that pytest's own heap is
not frozen.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from service.cli import GunicornServer, _worker_ready
from service.config import Config

CHILD = textwrap.dedent(
    """
    import gc, json
    from types import SimpleNamespace
    from service import create_app
    from service.cli import _worker_ready
    from service.config import Config

    def tracked(thing):
        return any(candidate is thing for candidate in gc.get_objects())

    app = create_app(Config(database_url="memory://"))
    before = {"app": tracked(app), "frozen": gc.get_freeze_count()}
    _worker_ready(SimpleNamespace(pid=1))
    made_after = [app]  # a container made while serving: the collector must still see it
    after = {"app": tracked(app), "frozen": gc.get_freeze_count(), "new": tracked(made_after)}
    print(json.dumps({"before": before, "after": after}))
    """
)


def test_the_ready_hook_freezes_the_heap_the_worker_loaded() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(seen)
    assert seen["before"] == {"app": True, "frozen": 0}
    assert seen["after"]["app"] is False  # out of every generation the collector scans
    assert seen["after"]["new"] is True  # what serving makes is still collected
    assert seen["after"]["frozen"] > 10_000  # the whole startup heap, not a handful


def test_gunicorn_calls_the_ready_hook_in_each_worker() -> None:
    server = GunicornServer(Config(database_url="memory://"))
    assert server.cfg.post_worker_init is _worker_ready
