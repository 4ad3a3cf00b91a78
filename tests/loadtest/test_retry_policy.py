"""Unit tests of the load test's retry policy: which answers are sent again, and when."""

from __future__ import annotations

import pytest

from loadtest.retry_policy import (
    RETRY_ATTEMPTS,
    RETRY_BACKOFF_CAP_SECONDS,
    retry_delay_seconds,
    should_retry,
)
from loadtest.tally import Answer


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (Answer(0, 1.0), True),  # no answer: unknown outcome, the key makes a retry safe
        (Answer(502, 1.0), True),
        (Answer(504, 1.0), True),
        (Answer(503, 1.0, code="lock_timeout", retry_after="1"), True),
        (Answer(503, 1.0, code="store_unavailable", retry_after="1"), True),
        (Answer(503, 1.0, code="lock_timeout"), False),  # no Retry-After: an anomaly, final
        (Answer(409, 1.0, code="idempotency_in_progress", retry_after="1"), True),
        (Answer(409, 1.0, code="stale_lock"), True),  # fenced: nothing written, try again
        (Answer(409, 1.0, code="stale_lock", retry_after="1"), True),
        (Answer(409, 1.0, code="insufficient_funds"), False),  # decided: retrying cannot help
        (Answer(409, 1.0, code="balance_limit_exceeded"), False),
        (Answer(422, 1.0, code="idempotency_key_reused"), False),
        (Answer(201, 1.0), False),
        (Answer(500, 1.0), False),
    ],
)
def test_which_answers_are_sent_again(answer: Answer, retried: bool) -> None:
    """Unknown outcomes and 'nothing changed, come back' answers are retried; the rest final."""
    assert should_retry(answer) is retried


def test_retries_are_bounded_and_back_off_within_the_cap() -> None:
    """A few attempts at most; the wait honours Retry-After up to the cap, never beyond."""
    assert 2 <= RETRY_ATTEMPTS <= 5
    for attempt in range(RETRY_ATTEMPTS):
        assert 0 <= retry_delay_seconds(attempt, None) <= RETRY_BACKOFF_CAP_SECONDS
    assert retry_delay_seconds(0, "1") == 1.0
    assert retry_delay_seconds(0, "30") == RETRY_BACKOFF_CAP_SECONDS
    assert retry_delay_seconds(0, "soon") <= RETRY_BACKOFF_CAP_SECONDS
