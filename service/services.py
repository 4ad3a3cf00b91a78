"""Use cases: open an account, deposit, withdraw, transfer, holds, audit, change mode.

Domain plus the store interface only: no Flask, no SQL. Each money operation
takes the mode setting that serves it explicitly (the API reads it once per
request, so the `X-Lock-Mode` header names the mode that really ran) and the
`Bank` (store and process-wide collaborators) as its last argument.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service import metrics
from service.domain import (
    DEFAULT_CURRENCY,
    Account,
    AccountAudit,
    BankAudit,
    CurrencyMismatch,
    FieldError,
    Hold,
    HoldAction,
    HoldChange,
    Leg,
    LockMode,
    LockTimeout,
    ModeSetting,
    SameAccount,
    TransactionKind,
    Unavailable,
    UnsafeModeRefused,
    ValidationFailed,
    WriteConflict,
    utc_now,
)
from service.idempotency import DEFAULT_TTL_HOURS, Completion
from service.keyed_locks import KeyedLocks
from service.modes import STRATEGIES, ModeContext, Operation
from service.redis_locks import RedisLocks
from service.stores.base import RetryableConflict, Store, TransferSpec, Written

logger = logging.getLogger(__name__)

# PostgreSQL may abort a transaction as a deadlock victim (40P01) or a
# serialization failure (40001); nothing was written, so it is safe to run
# again -- a few times, then the client is told to retry later.
DATABASE_RETRY_ATTEMPTS = 4
DATABASE_RETRY_BACKOFF_CAP_MS = 50
# How stale a worker's view of the shared mode setting may be; DESIGN asks
# for a `PUT /mode` to reach every worker and replica within one second.
MODE_REFRESH_SECONDS = 0.5
DEFAULT_MODE = ModeSetting(LockMode.LOCKED, 0)
# Expired idempotency keys: purged in batches this small, at most this often.
PURGE_BATCH_KEYS = 500
PURGE_MAX_BATCHES = 1000
PURGE_INTERVAL_SECONDS = 600


class ModeSource:
    """The current lock mode, shared through the store, cached briefly per process.

    Whatever another replica stored, a process that does not allow unsafe
    modes never serves, answers or stores one: the guard applies to what is
    read, to what a change starts from, and so to what is saved.
    """

    def __init__(
        self,
        store: Store,
        *,
        allow_unsafe_modes: bool,
        initial: ModeSetting = DEFAULT_MODE,
    ) -> None:
        self._store = store
        self.allow_unsafe_modes = allow_unsafe_modes
        self._initial = initial
        self._guard = threading.Lock()
        self._cached: ModeSetting | None = None
        self._fetched_at = 0.0

    def current(self) -> ModeSetting:
        with self._guard:
            cached, fetched_at = self._cached, self._fetched_at
        if cached is not None and time.monotonic() - fetched_at < MODE_REFRESH_SECONDS:
            return cached
        try:
            setting = self._guarded(self._stored())
        except Exception:
            if cached is None:
                raise
            logger.warning("could not refresh the lock mode; serving %s", cached.lock_mode)
            return cached
        self._remember(setting)
        return setting

    def change(
        self, lock_mode: LockMode | None = None, race_window_ms: int | None = None
    ) -> ModeSetting:
        if lock_mode is not None and lock_mode.is_unsafe and not self.allow_unsafe_modes:
            raise UnsafeModeRefused(
                f"lock mode {lock_mode.value} loses money and is not allowed here "
                "(start the service with BANK_ALLOW_UNSAFE_MODES=1 to allow it)"
            )
        base = self._guarded(self._stored())
        updated = ModeSetting(
            lock_mode if lock_mode is not None else base.lock_mode,
            race_window_ms if race_window_ms is not None else base.race_window_ms,
        )
        self._store.save_mode(updated)
        self._remember(updated)
        return updated

    def _stored(self) -> ModeSetting:
        """The shared setting; the configured one while none is stored (seeding it then)."""
        stored = self._store.load_mode()
        if stored is not None:
            return stored
        try:
            self._store.save_mode(self._initial, overwrite=False)
        except Unavailable as error:  # serve the configured mode; seed on a later refresh
            logger.warning("could not store the initial lock mode: %s", error.detail)
        return self._store.load_mode() or self._initial

    def _guarded(self, setting: ModeSetting) -> ModeSetting:
        # A replica that does not allow unsafe modes never serves one, even if
        # another replica (which does) stored it in the shared database.
        if setting.lock_mode.is_unsafe and not self.allow_unsafe_modes:
            return ModeSetting(LockMode.LOCKED, setting.race_window_ms)
        return setting

    def _remember(self, setting: ModeSetting) -> None:
        with self._guard:
            self._cached, self._fetched_at = setting, time.monotonic()


class KeyJanitor:
    """Purges expired idempotency keys now and then, off the request's path.

    At most one purge runs per process at a time, at most every
    PURGE_INTERVAL_SECONDS; each deletes PURGE_BATCH_KEYS keys per
    transaction, so it never holds the write lock a request needs for long.
    (Expired keys are ignored by a claim anyway: the purge only bounds the
    table's size.)
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._guard = threading.Lock()
        self._running = False
        self._last_started = -float(PURGE_INTERVAL_SECONDS)

    def maybe_purge(self) -> None:
        with self._guard:
            if self._running or time.monotonic() - self._last_started < PURGE_INTERVAL_SECONDS:
                return
            self._running, self._last_started = True, time.monotonic()
        threading.Thread(target=self._purge, name="bankrace-key-purge", daemon=True).start()

    def _purge(self) -> None:
        try:
            purge_expired_keys(self._store)
        except Exception:  # the next request tries again after the interval
            logger.warning("purging expired idempotency keys failed", exc_info=True)
        finally:
            with self._guard:
                self._running = False


def purge_expired_keys(store: Store) -> int:
    """Delete every key expired by now, in bounded batches; how many went."""
    now = utc_now()
    purged = 0
    for _ in range(PURGE_MAX_BATCHES):
        deleted = store.purge_keys(now, PURGE_BATCH_KEYS)
        purged += deleted
        if deleted < PURGE_BATCH_KEYS:
            break
    return purged


@dataclass
class Bank:
    """Everything a use case needs, wired once per process by `create_app`."""

    store: Store
    modes: ModeSource
    process_locks: KeyedLocks
    lock_timeout_ms: int
    transfer_lock_order: str = "sorted"
    idempotency_ttl_hours: int = DEFAULT_TTL_HOURS
    key_janitor: KeyJanitor | None = None
    #: The lock service of redis-lock and fenced; it connects on first use only.
    redis_locks: RedisLocks | None = None


# Every money operation takes an optional `completion`: the idempotency key
# whose response is stored in the operation's own transaction.


def open_account(
    owner: str,
    currency: str | None,
    opening_balance: int,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Account:
    return bank.store.open_account(
        owner.strip(),
        currency or DEFAULT_CURRENCY,
        opening_balance,
        setting.lock_mode.value,
        completion,
    )


def deposit(
    account_id: int,
    amount: int,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Written:
    leg = Leg(account_id, TransactionKind.DEPOSIT, amount)
    return _apply(Operation((leg,), (account_id,), completion=completion), setting, bank)


def withdraw(
    account_id: int,
    amount: int,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Written:
    leg = Leg(account_id, TransactionKind.WITHDRAWAL, amount)
    return _apply(Operation((leg,), (account_id,), completion=completion), setting, bank)


def transfer(
    from_account: int,
    to_account: int,
    amount: int,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Written:
    if from_account == to_account:
        raise SameAccount("a transfer needs two different accounts")
    # One read for both: a transfer pays for one round trip here, not two.
    both = bank.store.get_accounts((from_account, to_account))
    source, target = both[from_account], both[to_account]
    if source.currency != target.currency:
        raise CurrencyMismatch(
            f"account {from_account} holds {source.currency}, "
            f"account {to_account} holds {target.currency}"
        )
    # Ascending id order is what makes opposing transfers deadlock-free;
    # "request" order exists only to demonstrate the deadlock.
    if bank.transfer_lock_order == "sorted":
        lock_order = tuple(sorted((from_account, to_account)))
    else:
        lock_order = (from_account, to_account)
    operation = Operation(
        legs=(
            Leg(from_account, TransactionKind.TRANSFER_OUT, amount),
            Leg(to_account, TransactionKind.TRANSFER_IN, amount),
        ),
        lock_order=lock_order,
        transfer=TransferSpec(from_account, to_account, amount),
        completion=completion,
    )
    written = _apply(operation, setting, bank)
    if written.transfer is None:
        raise RuntimeError("the store did not record the transfer it was given")
    return written


# Holds (DESIGN §3 "Holds"): each is one leg through the same lock modes as
# any balance change (see service.modes); the services only say which leg.


def place_hold(
    account_id: int,
    amount: int,
    expires_in_s: int,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Written:
    expires_at = utc_now() + dt.timedelta(seconds=expires_in_s)
    leg = Leg(account_id, HoldAction.PLACE, amount, HoldChange(None, amount, expires_at))
    return _with_hold(
        _apply(Operation((leg,), (account_id,), completion=completion), setting, bank)
    )


def capture_hold(
    hold_id: int,
    amount: int | None,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Written:
    """Capture all of the hold (amount None) or part of it; the rest is released."""
    # The account and the amount of a hold never change, so reading them
    # before the lock mode's own read of the hold is safe.
    hold = bank.store.read_hold(hold_id)
    captured = hold.amount if amount is None else amount
    if captured > hold.amount:
        raise ValidationFailed(
            [FieldError("amount", f"must be at most {hold.amount}, the held amount")]
        )
    leg = Leg(hold.account_id, TransactionKind.CAPTURE, captured, HoldChange(hold_id, hold.amount))
    operation = Operation((leg,), (hold.account_id,), completion=completion)
    return _with_hold(_apply(operation, setting, bank))


def void_hold(
    hold_id: int,
    setting: ModeSetting,
    bank: Bank,
    completion: Completion | None = None,
) -> Written:
    hold = bank.store.read_hold(hold_id)
    leg = Leg(hold.account_id, HoldAction.VOID, hold.amount, HoldChange(hold_id, hold.amount))
    operation = Operation((leg,), (hold.account_id,), completion=completion)
    return _with_hold(_apply(operation, setting, bank))


def hold_now(hold_id: int, bank: Bank) -> Hold:
    """The hold as a client sees it now (a pending hold past its expiry is expired)."""
    return bank.store.read_hold(hold_id).seen_at(utc_now())


def _with_hold(written: Written) -> Written:
    if written.hold is None:
        raise RuntimeError("the store did not record the hold it was given")
    return written


def _apply(operation: Operation, setting: ModeSetting, bank: Bank) -> Written:
    kind = "transfer" if operation.transfer is not None else operation.legs[0].kind.value
    with metrics.operation(kind, setting.lock_mode.value):
        return _apply_with_retries(operation, setting, bank)


def _apply_with_retries(operation: Operation, setting: ModeSetting, bank: Bank) -> Written:
    strategy = STRATEGIES[setting.lock_mode]
    # One deadline for the whole request: retries never stretch a client's
    # wait past the lock timeout (plus the one attempt already under way).
    deadline = time.monotonic() + bank.lock_timeout_ms / 1000
    context = ModeContext(
        bank.store, bank.process_locks, setting.race_window_ms, deadline, bank.redis_locks
    )
    for attempt in range(1, DATABASE_RETRY_ATTEMPTS + 1):
        try:
            return strategy(operation, context)
        except RetryableConflict as conflict:
            logger.info("database retry after %s (attempt %d)", conflict, attempt)
            backoff_seconds = random.uniform(0, DATABASE_RETRY_BACKOFF_CAP_MS) / 1000  # nosec B311  # jitter
            if attempt == DATABASE_RETRY_ATTEMPTS or time.monotonic() + backoff_seconds > deadline:
                if conflict.deadlock:
                    raise LockTimeout(
                        "the database broke a deadlock on these accounts; nothing was written"
                    ) from conflict
                raise WriteConflict(
                    "the database kept aborting this transaction; nothing was written"
                ) from conflict
            metrics.database_retry(conflict.deadlock)
            time.sleep(backoff_seconds)
    raise RuntimeError("unreachable: the retry loop always returns or raises")


def balances(account_ids: Sequence[int], bank: Bank) -> list[Account]:
    """The accounts, in the order asked, from one read: their sum is a consistent snapshot.

    One statement in one transaction sees one snapshot on every store (a
    PostgreSQL statement's snapshot under READ COMMITTED, an SQLite read
    transaction under WAL, the in-memory store's mutex), and a transfer
    writes both legs in one transaction: a snapshot never holds half of one.
    NotFound names the first unknown id.
    """
    found = bank.store.get_accounts(account_ids)
    return [found[account_id] for account_id in account_ids]


def account_audit(account_id: int, bank: Bank) -> AccountAudit:
    return bank.store.audit_account(account_id)


def bank_audit(bank: Bank) -> BankAudit:
    return bank.store.audit_bank()
