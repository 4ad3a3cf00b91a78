"""The metrics directory outlives every gunicorn worker that exits.

Workers are forked inside `metrics.shared_directory()`; a worker that exits
(SIGTERM, a restart) leaves by raising SystemExit through the very frames it
was forked from, so the block's clean-up ran in the worker too and removed
the directory under the master: the next worker then failed to boot and
gunicorn stopped the whole service (found by tests/e2e/test_store_faults.py,
which replaces a worker during a fault).
"""

from __future__ import annotations

import subprocess
import sys

# Run apart: shared_directory() points prometheus-client at the directory for
# the whole process, which must not leak into the other tests.
CHILD_LEAVES_THE_BLOCK = """
import os
from service import metrics

class ChildLeaves(Exception):
    pass

try:
    with metrics.shared_directory() as directory:
        pid = os.fork()
        if pid == 0:
            raise ChildLeaves  # leaves the block as an exiting worker does
        os.waitpid(pid, 0)
        print("kept" if directory.exists() else "removed")
    print("removed after" if not directory.exists() else "left behind")
except ChildLeaves:
    os._exit(0)
"""


def test_a_forked_worker_leaving_the_block_keeps_the_directory() -> None:
    """Only the process that made the directory removes it, when it leaves the block itself."""
    environment = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD_LEAVES_THE_BLOCK],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["kept", "removed", "after"], result.stdout
