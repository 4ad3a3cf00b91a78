"""The lock modes as the load tests know them (DESIGN §2): names, which lose money, one line each.

One home for what every runner, report and the live view say about a mode. The
service's own list is `GET /mode`; this is the client's copy, so that options can
be checked and reports written without a server. Black-box: nothing of `service`.
"""

from __future__ import annotations

# DESIGN §2's order: the textbook story first, then the distributed lock and its fix.
ALL_MODES = ("unlocked", "locked", "process-lock", "optimistic", "atomic", "redis-lock", "fenced")
# Modes that lose money by design; the others must keep every invariant.
UNSAFE_MODES = frozenset({"unlocked", "process-lock", "redis-lock"})
SAFE_MODES = tuple(mode for mode in ALL_MODES if mode not in UNSAFE_MODES)
# Modes whose server needs Redis (BANK_REDIS_URL) to serve a single write.
REDIS_MODES = ("redis-lock", "fenced")

# One line per mode, shortened from the README's lock-mode table.
MODE_EXPLANATIONS = {
    "unlocked": "read, wait the race window, write: concurrent writes overwrite each other",
    "locked": "the store's exclusive lock around read-wait-write: correct, writers queue",
    "process-lock": "a threading.Lock per account: correct in one process, not across workers",
    "optimistic": "write only if the version did not change, else retry (bounded): correct",
    "atomic": "one guarded UPDATE, no read to race on: correct, the window costs nothing",
    "redis-lock": "a lease lock in Redis: correct until a holder outlives its lease",
    "fenced": "the Redis lock plus a fencing token the store checks: a stale holder gets 409",
}
UNKNOWN_MODE_EXPLANATION = "see the README's lock-mode table"


def explain_mode(lock_mode: str) -> str:
    return MODE_EXPLANATIONS.get(lock_mode, UNKNOWN_MODE_EXPLANATION)


def is_unsafe(lock_mode: str) -> bool:
    return lock_mode in UNSAFE_MODES
