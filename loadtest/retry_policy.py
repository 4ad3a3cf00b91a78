"""When the load test sends a keyed request again, and how long it waits first.

Every money request carries its own Idempotency-Key, so sending it again can
never move the money twice: the server either runs it (the first try changed
nothing) or replays the first answer. The load test retries, bounded and with
jittered backoff, exactly the answers after which the client is unsure or was
told to come back:
- no answer, a 502 or 504 from a balancer: the outcome is unknown;
- a 503 with Retry-After: nothing changed, the server said when to return;
- 503 `outcome_unknown`: the write lost its COMMIT and may have been applied;
  the same key makes the server replay it if it was, run it if it was not;
- 409 `idempotency_in_progress`: the first try still runs;
- 409 `stale_lock` (`fenced`): this try's lock lease ran out and a newer holder
  took the account, so the store refused the write; nothing changed.
Any other answer is final. Pure: no HTTP, no Locust, no gevent.
"""

from __future__ import annotations

import random

from loadtest.tally import OUTCOME_UNKNOWN_CODE, STALE_LOCK_CODE, Answer

# A keyed request is sent at most this many times, backing off between tries.
RETRY_ATTEMPTS = 4
RETRY_BACKOFF_BASE_SECONDS = 0.05
RETRY_BACKOFF_CAP_SECONDS = 1.0
RETRIED_CONFLICT_CODES = frozenset({"idempotency_in_progress", STALE_LOCK_CODE})


def should_retry(answer: Answer) -> bool:
    """An answer after which the same keyed request may, and should, be sent again."""
    if answer.status in (0, 502, 504) or answer.code == OUTCOME_UNKNOWN_CODE:
        return True  # unknown outcome: the key makes the retry safe
    if answer.status == 503 and answer.retry_after:
        return True  # nothing changed; the server said when to come back
    return answer.status == 409 and answer.code in RETRIED_CONFLICT_CODES


def retry_delay_seconds(attempt: int, retry_after: str | None) -> float:
    """Jittered exponential backoff, never shorter than a Retry-After of up to a second."""
    backoff = min(RETRY_BACKOFF_CAP_SECONDS, RETRY_BACKOFF_BASE_SECONDS * 2**attempt)
    told = float(retry_after) if retry_after and retry_after.isdigit() else 0.0
    return max(min(told, RETRY_BACKOFF_CAP_SECONDS), random.uniform(0, backoff))  # nosec B311  # retry jitter, not a secret
