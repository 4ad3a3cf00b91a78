"""The lock modes: what each one does to a read-modify-write.

This is the whole lesson of the seed notes in one file. Every mode runs the
same operation -- some legs (account, kind, amount), optionally a transfer --
and differs only in what protects the gap between reading a balance and
writing the new one. The race window (`race_window_ms`) is a deliberate pause
in exactly that gap, so the race can be made visible on demand and the cost
of holding a lock can be measured.

| mode          | protection of read -> pause -> write                         |
|---------------|--------------------------------------------------------------|
| unlocked      | none: two requests read the same balance, the last write wins |
| process-lock  | a threading.Lock per account: one process only               |
| locked        | the store's exclusive lock (mutex / BEGIN IMMEDIATE / FOR UPDATE) |
| optimistic    | write only if the version is still the one read; else retry  |
| atomic        | no read at all: one guarded UPDATE does the arithmetic       |
| redis-lock    | a lease lock per account in Redis: until a holder outlives it |
| fenced        | the Redis lock; the store refuses a stale token or version   |

Holds (DESIGN §3 "Holds") are legs too: placing or voiding a hold is a leg
that moves no money but writes its account (version + 1) and the hold row,
a capture is a journaled debit that ends its hold. So each mode protects a
hold's read-modify-write -- read the balance, the held money and the hold;
pause; write the account and the hold -- exactly as it protects a balance:

| mode          | what guards a hold's write                                   |
|---------------|--------------------------------------------------------------|
| unlocked      | nothing: two captures of one hold both land, a capture lands |
|               | after a void or past the expiry, two holds over-reserve      |
| process-lock  | its lock: within one process only                            |
| locked        | the account's store lock, from the read of the hold to the write |
| optimistic    | the account's version: every hold change bumps it            |
| atomic        | no read: the hold row's `status = 'pending' AND expires_at > |
|               | now`, a debit's or new hold's `balance + delta >= held`      |
| redis-lock    | its lease: until a holder outlives it                        |
| fenced        | the token and the version, as for any write                  |

On PostgreSQL a write that changes a hold locks its account's row first, as
every balance write does anyway, so writers of one hold queue in one order
(never a deadlock between two modes just after a switch).

In every mode but `unlocked`, the write also checks the hold's expiry by its
own clock: no lock stops time, and a capture decided before `expires_at` but
written after it would make a hold captured after it was seen expired.

In `atomic` there is no read to pause after: the window is spent before the
guarded update, outside any lock, so it adds latency but cannot open a race.

`redis-lock` is correct across threads, processes and replicas only while
every holder finishes within its lease; a race window longer than the lease,
or a pause (GC, swap, SIGSTOP), lets the next holder in while the first
still writes. `fenced` hands the store the lock's fencing token with the
read and the write: the read records it on the account, and the write
applies only while the account still holds that token and the version that
was read (else 409 `stale_lock`, nothing written), so neither a late holder
nor a write in another mode meanwhile (workers serve the old mode for a
moment after a switch) is overwritten.

Every safe mode is safe against the others' writes at the same moment:
`locked` holds the store's lock that every write waits for, `optimistic`
and `fenced` compare the version every write bumps, `atomic` never writes
from a stale read.

Modes know the store interface and the domain; not HTTP, not SQL.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from service import metrics
from service.domain import (
    BalanceState,
    Leg,
    LockMode,
    StaleLock,
    WriteConflict,
    check_new_balance,
    check_pending,
    utc_now,
)
from service.idempotency import Completion
from service.keyed_locks import KeyedLocks
from service.redis_locks import RedisLocks
from service.stores.base import (
    LegWrite,
    LegWriter,
    Store,
    TransferSpec,
    VersionConflict,
    Written,
)

# Optimistic retries: bounded by count and by the lock timeout, whichever
# comes first, with jittered exponential backoff so the losers of one round
# do not collide again in lockstep.
OPTIMISTIC_MAX_ATTEMPTS = 100
OPTIMISTIC_BACKOFF_BASE_MS = 1
OPTIMISTIC_BACKOFF_CAP_MS = 50


@dataclass(frozen=True)
class Operation:
    """What to apply: the legs, and the order in which their accounts are locked."""

    legs: tuple[Leg, ...]
    lock_order: tuple[int, ...]
    transfer: TransferSpec | None = None
    #: The idempotency key's response, stored in the same transaction.
    completion: Completion | None = None

    @property
    def account_ids(self) -> tuple[int, ...]:
        return tuple(leg.account_id for leg in self.legs)

    @property
    def ended_hold_id(self) -> int | None:
        """The hold this operation captures or voids (None for every other operation)."""
        for leg in self.legs:
            if leg.hold is not None and leg.hold.hold_id is not None:
                return leg.hold.hold_id
        return None


@dataclass(frozen=True)
class ModeContext:
    store: Store
    process_locks: KeyedLocks
    race_window_ms: int
    #: time.monotonic() after which no more retries start (the lock timeout).
    deadline: float
    #: The lock service of redis-lock and fenced (None where no Redis is configured).
    redis_locks: RedisLocks | None = None

    @property
    def redis(self) -> RedisLocks:
        if self.redis_locks is None:
            raise RuntimeError("a Redis lock mode ran without a lock service")
        return self.redis_locks


def pause_in_race_window(race_window_ms: int) -> None:
    """The product's race window: widen the read-to-write gap on purpose.

    The one place every mode pauses, looked up at each call: the mode-switch
    tests put a gate here to hold an operation in its gap
    (tests/support/interleaving.py).
    """
    if race_window_ms > 0:
        time.sleep(race_window_ms / 1000)


def in_lock_order(operation: Operation) -> list[Leg]:
    """The legs in the order their rows are written.

    Writing rows takes the database's row locks even without FOR UPDATE, so
    the writes follow the same order as every explicit lock: ascending ids
    by default, which keeps opposing transfers from deadlocking.
    """
    position = {account_id: index for index, account_id in enumerate(operation.lock_order)}
    return sorted(operation.legs, key=lambda leg: position[leg.account_id])


def plan_writes(
    legs: Sequence[Leg],
    states: Mapping[int, BalanceState],
    *,
    compare_versions: bool,
    fences: Mapping[int, int] | None = None,
    check_hold_expiry: bool = True,
) -> list[LegWrite]:
    """New balances computed from what was read; refuses overdrafts (of the
    available money) and overflows."""
    return [
        LegWrite(
            leg,
            new_balance=check_new_balance(
                states[leg.account_id].balance,
                leg.delta,
                leg.account_id,
                states[leg.account_id].held,
                leg.reserve,
            ),
            expected_version=states[leg.account_id].version if compare_versions else None,
            fence=fences[leg.account_id] if fences is not None else None,
            check_hold_expiry=check_hold_expiry,
        )
        for leg in legs
    ]


def read_hold_pending(reader: LegWriter, operation: Operation) -> None:
    """The read of a capture or void: the hold must be pending now (else HoldNotPending)."""
    hold_id = operation.ended_hold_id
    if hold_id is not None:
        check_pending(reader.read_hold(hold_id), utc_now())


def read_modify_write(
    writer: LegWriter, operation: Operation, context: ModeContext, mode: LockMode
) -> Written:
    """Read, pause, write: safe only if whoever calls this holds a lock."""
    states = writer.read_states(operation.account_ids)
    read_hold_pending(writer, operation)
    # `unlocked` writes what it read, however stale; the others at least
    # re-check the clock (see the module docstring).
    writes = plan_writes(
        in_lock_order(operation),
        states,
        compare_versions=False,
        check_hold_expiry=mode is not LockMode.UNLOCKED,
    )
    pause_in_race_window(context.race_window_ms)
    return writer.write_legs(writes, mode.value, operation.transfer, operation.completion)


def run_unlocked(operation: Operation, context: ModeContext) -> Written:
    # Each step is its own short transaction: between the read and the write
    # anyone may write, and this write silently overwrites them (lost update).
    return read_modify_write(context.store, operation, context, LockMode.UNLOCKED)


def run_process_lock(operation: Operation, context: ModeContext) -> Written:
    # The textbook fix: correct among this process's threads, invisible to
    # every other worker process or replica, which keep racing.
    asked = metrics.lock_started()
    with context.process_locks.holding(operation.lock_order):
        metrics.lock_waited(LockMode.PROCESS_LOCK.value, asked)
        return read_modify_write(context.store, operation, context, LockMode.PROCESS_LOCK)


def run_locked(operation: Operation, context: ModeContext) -> Written:
    # The store's lock is shared by every process using the store, and the
    # read and the write are one transaction under it.
    return context.store.exclusive(
        operation.lock_order,
        metrics.after_lock_wait(
            LockMode.LOCKED.value,
            lambda writer: read_modify_write(writer, operation, context, LockMode.LOCKED),
        ),
    )


def run_optimistic(operation: Operation, context: ModeContext) -> Written:
    for attempt in range(OPTIMISTIC_MAX_ATTEMPTS):
        states = context.store.read_states(operation.account_ids)
        read_hold_pending(context.store, operation)
        writes = plan_writes(in_lock_order(operation), states, compare_versions=True)
        pause_in_race_window(context.race_window_ms)
        try:
            return context.store.write_legs(
                writes, LockMode.OPTIMISTIC.value, operation.transfer, operation.completion
            )
        except VersionConflict:
            metrics.optimistic_conflict()
            backoff_ms = random.uniform(  # nosec B311  # backoff jitter, not a secret
                0, min(OPTIMISTIC_BACKOFF_CAP_MS, OPTIMISTIC_BACKOFF_BASE_MS * 2**attempt)
            )
            if time.monotonic() + backoff_ms / 1000 >= context.deadline:
                break
            time.sleep(backoff_ms / 1000)
    raise WriteConflict(
        "the account kept changing under this request; nothing was written, retry later"
    )


def run_atomic(operation: Operation, context: ModeContext) -> Written:
    pause_in_race_window(context.race_window_ms)
    # The store guards each write: the balance against the held money, the
    # hold against its status and expiry (nothing was read to compare with).
    writes = [LegWrite(leg, check_hold_pending=True) for leg in in_lock_order(operation)]
    return context.store.write_legs(
        writes, LockMode.ATOMIC.value, operation.transfer, operation.completion
    )


def run_redis_lock(operation: Operation, context: ModeContext) -> Written:
    # Shared by every process and replica, like the store's lock -- but it is
    # a lease: a holder still in its race window when the lease runs out
    # writes anyway, over what the next holder wrote meanwhile.
    asked = metrics.lock_started()
    mode = LockMode.REDIS_LOCK
    with context.redis.holding(operation.lock_order, mode.value, context.deadline):
        metrics.lock_waited(mode.value, asked)
        return read_modify_write(context.store, operation, context, mode)


def run_fenced(operation: Operation, context: ModeContext) -> Written:
    # The same lease, and the store as referee: the read records this lock's
    # token on the accounts, the write applies only while no newer token has
    # been recorded and the version is still the one read, so a late holder
    # -- or a worker serving another mode right after a switch, which takes
    # no Redis lock -- is never overwritten: this write is refused instead.
    asked = metrics.lock_started()
    mode = LockMode.FENCED
    with context.redis.holding(operation.lock_order, mode.value, context.deadline) as lease:
        metrics.lock_waited(mode.value, asked)
        try:
            states = context.store.claim_states(lease.tokens)
            read_hold_pending(context.store, operation)
            writes = plan_writes(
                in_lock_order(operation), states, compare_versions=True, fences=lease.tokens
            )
            pause_in_race_window(context.race_window_ms)
            return context.store.write_legs(
                writes, mode.value, operation.transfer, operation.completion
            )
        except StaleLock as refusal:
            metrics.stale_lock_refused(mode.value)
            context.redis.count_past(refusal.newer_token)  # heals a counter Redis lost
            raise


Strategy = Callable[[Operation, ModeContext], Written]

STRATEGIES: Mapping[LockMode, Strategy] = {
    LockMode.UNLOCKED: run_unlocked,
    LockMode.LOCKED: run_locked,
    LockMode.PROCESS_LOCK: run_process_lock,
    LockMode.OPTIMISTIC: run_optimistic,
    LockMode.ATOMIC: run_atomic,
    LockMode.REDIS_LOCK: run_redis_lock,
    LockMode.FENCED: run_fenced,
}
