"""Real packet loss on one loopback port: a network that dies silently, without FIN or RST.

A userspace proxy that stops forwarding cannot fake this: its kernel still
acknowledges data and answers keepalive probes, so the client sees a live
peer. Only dropping the packets themselves (netfilter, which needs root or
CAP_NET_ADMIN and the `iptables` command) shows what a pulled cable, a
crashed host or a firewall that forgot the connection does to a client.

The rules match one TCP port on the loopback interface only, carry a
comment naming the test, and are deleted when the block ends, even on
failure. Without iptables or the privilege the test skips locally and fails
under CI=true, like any missing component.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from tests.support.postgres import missing

RULE_COMMENT = "bankrace-test-packet-loss"
IPTABLES_TIMEOUT_SECONDS = 30


def _iptables(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", str(IPTABLES_TIMEOUT_SECONDS), *arguments],
        capture_output=True,
        text=True,
        timeout=IPTABLES_TIMEOUT_SECONDS + 5,
        check=False,
    )


@contextmanager
def dropped_packets(port: int) -> Iterator[None]:
    """Every TCP packet to or from 127.0.0.1:`port` vanishes until the block ends."""
    if shutil.which("iptables") is None:
        missing("packet loss needs the iptables command (apt-get install iptables)")
    with ExitStack() as cleanup:
        for direction in ("--dport", "--sport"):
            rule = ["INPUT", "-i", "lo", "-p", "tcp", direction, str(port)]
            rule += ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
            inserted = _iptables("-I", *rule)
            if inserted.returncode != 0:
                missing(f"cannot drop packets with iptables: {inserted.stderr.strip()}")
            cleanup.callback(_delete, rule)
        yield


def _delete(rule: list[str]) -> None:
    deleted = _iptables("-D", *rule)
    if deleted.returncode != 0:
        raise RuntimeError(f"could not delete iptables rule {rule}: {deleted.stderr.strip()}")
