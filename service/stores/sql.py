"""The SQL store (SQLite or PostgreSQL): transactions, and which module does what in them.

Every statement a lock mode relies on is spelled out in `sql_statements`:
the plain `UPDATE ... SET balance = :new_balance` a read-modify-write ends
with, the `AND version = :expected_version` of optimistic locking, the
guarded `SET balance = balance + :delta WHERE balance + :delta BETWEEN 0 AND
max` of the atomic mode, the fencing token's claim and `AND fence = :fence`
of the fenced mode, and the exclusive lock (`BEGIN IMMEDIATE` on
SQLite, `SELECT ... FOR UPDATE` in the given order on PostgreSQL).

This module opens the transactions and hands each to the module of its
concern: money (`sql_money`), fencing tokens (`sql_fences`), idempotency
keys (`sql_keys`), accounts (`sql_accounts`), the journal's reads
(`sql_journal`) and the audits (`sql_audit`). The write path runs driver
SQL (`sql_cursor`): the statements are written once, so no request pays
for building and compiling SQLAlchemy constructs (about a fifth of a
request's time, profiled). So do the reads every request makes -- accounts
one, several or a page at a time, and a read-modify-write's read outside a
lock: each is one statement, its own snapshot, run outside any transaction
(`_read`). The other reads (journal, holds, audits) keep SQLAlchemy Core in
a read transaction.

SQLite writes go through one group-commit writer per process (see
`group_commit`); PostgreSQL writes run in the request's thread, each in its
own transaction, because PostgreSQL locks rows, not the database, and
already commits concurrent transactions together.

Database errors are translated at this boundary (`sql_errors`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar, cast

import psycopg
from sqlalchemy import Connection, inspect, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.domain import (
    Account,
    AccountAudit,
    BalanceState,
    BankAudit,
    Hold,
    HoldStatus,
    LockMode,
    ModeSetting,
    StoreUnavailable,
    Transaction,
    Transfer,
    utc_now,
)
from service.idempotency import Claim, Completion, KeyRecord, StoredResponse
from service.stores import sql_accounts, sql_audit, sql_fences, sql_holds, sql_journal, sql_keys
from service.stores import sql_statements as statements
from service.stores.base import LegWrite, LegWriter, Store, TransferSpec, Written
from service.stores.engines import build_engine
from service.stores.group_commit import GroupCommitter
from service.stores.sql_cursor import DriverCursor, SqlDialect, kept_cursors
from service.stores.sql_errors import DRIVER_ERRORS, begun, translated_errors
from service.stores.sql_money import SqlLegWriter
from service.stores.writer_lock import WriterLock
from service.tables import SETTINGS_ROW_ID, settings

T = TypeVar("T")
READ_CURSORS_KEY = "bankrace.read_cursors"


class SqlStore(Store):
    def __init__(
        self,
        url: str,
        *,
        lock_timeout_ms: int,
        pool_size: int,
        expected_revision: str | None = None,
    ) -> None:
        self._engine = build_engine(url, lock_timeout_ms=lock_timeout_ms, pool_size=pool_size)
        self._is_sqlite = self._engine.dialect.name == "sqlite"
        self._dialect = SqlDialect(is_postgresql=not self._is_sqlite)
        self.sql = self._dialect.sql
        self._lock_timeout_ms = lock_timeout_ms
        self._expected_revision = expected_revision
        self._committer: GroupCommitter | None = None
        self._writer_lock: WriterLock | None = None
        if self._is_sqlite and self._engine.url.database:
            self._writer_lock = WriterLock(self._engine.url.database)
            self._committer = GroupCommitter(
                self._engine, prepare=_begin_immediate, writer_lock=self._writer_lock.held
            )

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; SQLite writers take the write lock up front (IMMEDIATE)."""
        with translated_errors(), self._engine.connect() as connection:
            if self._is_sqlite:
                connection.execution_options(sqlite_begin="IMMEDIATE" if write else "DEFERRED")
            with begun(connection, write=write):  # a lost COMMIT: outcome unknown
                yield connection

    @contextmanager
    def _read(self) -> Iterator[sql_accounts.Reader]:
        """One read statement outside any transaction: a single statement is its own snapshot.

        No SQLAlchemy Connection, no BEGIN and no COMMIT: the pool's checkout
        (with its checks of the connection: `sqlite_files`, `engines`) and the
        driver's cursor. SQLite's driver runs a statement outside BEGIN in
        autocommit (`engines` turned its own BEGIN off); psycopg is switched
        to autocommit for the statement, two round trips fewer than BEGIN ...
        COMMIT, and back before the connection returns to the pool -- a
        connection that cannot be switched back is discarded, never pooled.
        """
        with translated_errors():
            pooled = self._engine.raw_connection()
            driver: Any = pooled.driver_connection
            broken: BaseException | None = None
            try:
                kept = None
                if not self._is_sqlite:
                    driver.autocommit = True
                    kept = kept_cursors(pooled.info, READ_CURSORS_KEY, driver)
                reader = sql_accounts.Reader(driver, self._dialect, kept)
                try:
                    yield reader
                finally:
                    reader.close()
            except DRIVER_ERRORS as error:
                if self._engine.dialect.is_disconnect(cast(Any, error), driver, None):
                    broken = error
                raise
            finally:
                if broken is None and not self._is_sqlite:
                    broken = _out_of_autocommit(driver)
                if broken is not None:
                    pooled.invalidate(broken)
                pooled.close()

    def _write(self, work: Callable[[DriverCursor], T], *, durable: bool = True) -> T:
        """Run `work` in a write transaction: the group commit's on SQLite, its own elsewhere.

        `durable=False`: on SQLite the write may share a batch committed without its own
        fsync (see `GroupCommitter.run`); elsewhere it changes nothing.
        """
        if self._committer is not None:
            deadline = time.monotonic() + self._lock_timeout_ms / 1000
            return self._committer.run(
                lambda connection: work(DriverCursor(connection, self._dialect)),
                deadline,
                durable=durable,
            )
        with self._transaction(write=True) as connection:
            return work(DriverCursor(connection, self._dialect))

    # ------------------------------------------------------------------ money

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        with self._read() as reader:
            return sql_accounts.read_states(reader, account_ids)

    def read_hold(self, hold_id: int) -> Hold:
        with self._read() as reader:
            return sql_holds.read_hold_alone(reader, hold_id)

    def list_holds(
        self, account_id: int, status: HoldStatus | None, before: int | None, limit: int
    ) -> list[Hold]:
        with self._transaction(write=False) as connection:
            sql_accounts.require_account(connection, account_id)
            return sql_holds.list_holds(connection, account_id, status, before, limit, utc_now())

    def claim_states(self, fences: Mapping[int, int]) -> dict[int, BalanceState]:
        return self._write(lambda cursor: sql_fences.claim_states(cursor, fences))

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        return self._write(
            lambda cursor: SqlLegWriter(cursor).write_legs(writes, lock_mode, transfer, completion)
        )

    def exclusive(
        self, account_ids: Sequence[int], work: Callable[[LegWriter], Written]
    ) -> Written:
        # SQLite: the transaction's BEGIN IMMEDIATE already holds the one
        # database-wide write lock, so it serializes everything and cannot deadlock.
        deadline = time.monotonic() + self._lock_timeout_ms / 1000

        def locked(cursor: DriverCursor) -> Written:
            writer = SqlLegWriter(cursor)
            if not self._is_sqlite:
                writer.lock_rows(account_ids, deadline)
            return work(writer)

        return self._write(locked)

    # ------------------------------------------------------------------ accounts

    def open_account(
        self,
        owner: str,
        currency: str,
        opening_balance: int,
        lock_mode: str,
        completion: Completion | None = None,
    ) -> Account:
        return self._write(
            lambda cursor: sql_accounts.open_account(
                cursor, owner, currency, opening_balance, lock_mode, completion
            )
        )

    def get_account(self, account_id: int) -> Account:
        with self._read() as reader:
            return sql_accounts.get_account(reader, account_id)

    def get_accounts(self, account_ids: Sequence[int]) -> dict[int, Account]:
        with self._read() as reader:
            return sql_accounts.get_accounts(reader, account_ids)

    def list_accounts(self, after: int, limit: int) -> list[Account]:
        with self._read() as reader:
            return sql_accounts.list_accounts(reader, after, limit)

    # ------------------------------------------------------------------ idempotency keys

    def claim_key(self, claim: Claim) -> KeyRecord | None:
        # A claim needs no fsync of its own: whatever the key leads to is acknowledged only
        # after a later durable commit, whose fsync covers the claim (GroupCommitter.run).
        return self._write(lambda cursor: sql_keys.claim_key(cursor, claim), durable=False)

    def finish_key(self, claim: Claim, response: StoredResponse) -> None:
        self._write(lambda cursor: sql_keys.store_response(cursor, claim, response))

    def release_key(self, claim: Claim) -> None:
        self._write(lambda cursor: sql_keys.release_key(cursor, claim))

    def purge_keys(self, now: dt.datetime, limit: int) -> int:
        return self._write(lambda cursor: sql_keys.purge_keys(cursor, now, limit))

    # ------------------------------------------------------------------ journal

    def get_transaction(self, transaction_id: int) -> Transaction:
        with self._transaction(write=False) as connection:
            return sql_journal.get_transaction(connection, transaction_id)

    def list_transactions(
        self, account_id: int, before: int | None, limit: int
    ) -> list[Transaction]:
        with self._transaction(write=False) as connection:
            return sql_journal.list_transactions(connection, account_id, before, limit)

    def get_transfer(self, transfer_id: int) -> Transfer:
        with self._transaction(write=False) as connection:
            return sql_journal.get_transfer(connection, transfer_id)

    def audit_account(self, account_id: int) -> AccountAudit:
        with self._transaction(write=False) as connection:
            audit = sql_audit.audit_account(connection, account_id, named=self.sql)
            with sql_audit.bounded(connection):  # the same time bound as the journal's
                holds = sql_holds.audit_account_holds(
                    connection, account_id, audit.balance, named=self.sql
                )
        return replace(audit, holds=holds)

    def audit_bank(self) -> BankAudit:
        with self._transaction(write=False) as connection:
            audit = sql_audit.audit_bank(connection, named=self.sql)
            with sql_audit.bounded(connection):  # the same time bound as the journal's
                holds = sql_holds.audit_bank_holds(connection, named=self.sql)
        return replace(audit, holds=holds)

    # ------------------------------------------------------------------ settings

    def load_mode(self) -> ModeSetting | None:
        with self._transaction(write=False) as connection:
            row = connection.exec_driver_sql(
                self.sql(statements.LOAD_MODE), {"id": SETTINGS_ROW_ID}
            ).first()
        if row is None:
            return None
        return ModeSetting(LockMode(row.lock_mode), row.race_window_ms)

    def save_mode(self, setting: ModeSetting, *, overwrite: bool = True) -> None:
        # One upsert statement, so replicas starting at once cannot collide
        # on the single row (both SQLite and PostgreSQL have ON CONFLICT).
        insert_statement = sqlite_insert if self._is_sqlite else postgresql_insert
        statement = insert_statement(settings).values(
            id=SETTINGS_ROW_ID,
            lock_mode=setting.lock_mode.value,
            race_window_ms=setting.race_window_ms,
            updated_at=utc_now(),
        )
        if overwrite:
            statement = statement.on_conflict_do_update(
                index_elements=[settings.c.id],
                set_={
                    "lock_mode": statement.excluded.lock_mode,
                    "race_window_ms": statement.excluded.race_window_ms,
                    "updated_at": statement.excluded.updated_at,
                },
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=[settings.c.id])
        # Through the group commit on SQLite: in line with the queued writes
        # instead of polling for the lock against a writer that rarely lets go
        # (a PUT /mode out of `locked` under load timed out that way).
        self._write(lambda cursor: cursor.execute(statement))

    def check_ready(self) -> None:
        with self._transaction(write=False) as connection:  # StoreUnavailable when unreachable
            if not inspect(connection).has_table("alembic_version"):
                raise StoreUnavailable("the schema is not migrated (run `bankrace db upgrade`)")
            revision = connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalar_one_or_none()
        if self._expected_revision is not None and revision != self._expected_revision:
            raise StoreUnavailable(
                f"the schema is at revision {revision}, expected {self._expected_revision}"
            )

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
        self._engine.dispose()
        if self._writer_lock is not None:
            self._writer_lock.close()


def _out_of_autocommit(driver: Any) -> BaseException | None:
    """psycopg back out of autocommit for the pool; the error if it cannot be (then discard it)."""
    try:
        driver.autocommit = False
    except psycopg.Error as error:  # broken, or cut off mid-statement
        return error
    return None


def _begin_immediate(connection: Connection) -> None:
    connection.execution_options(sqlite_begin="IMMEDIATE")
