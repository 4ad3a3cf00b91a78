"""The SQL store (SQLite or PostgreSQL).

Every statement a lock mode relies on is spelled out in `sql_statements`:
the plain `UPDATE ... SET balance = :new_balance` a read-modify-write ends
with, the `AND version = :expected_version` of optimistic locking, the
guarded `SET balance = balance + :delta WHERE balance + :delta BETWEEN 0 AND
max` of the atomic mode, the fencing token's claim and `AND fence = :fence`
of the fenced mode, and the exclusive lock (`BEGIN IMMEDIATE` on
SQLite, `SELECT ... FOR UPDATE` in the given order on PostgreSQL).

The write path runs those statements as driver SQL (`exec_driver_sql`):
they are written once, so no request pays for building and compiling
SQLAlchemy constructs (about a fifth of a request's time, profiled). Reads
of whole rows for the API keep SQLAlchemy Core, which maps types.

SQLite writes go through one group-commit writer per process (see
`group_commit`); PostgreSQL writes run in the request's thread, each in its
own transaction, because PostgreSQL locks rows, not the database, and
already commits concurrent transactions together.

Database errors are translated at this boundary (`sql_errors`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Executable, Row, inspect, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.domain import (
    MAX_BALANCE_MINOR,
    Account,
    AccountAudit,
    BalanceLimitExceeded,
    BalanceState,
    BankAudit,
    InsufficientFunds,
    LockMode,
    ModeSetting,
    NotFound,
    StaleLock,
    StoreUnavailable,
    Transaction,
    TransactionKind,
    Transfer,
    utc_now,
)
from service.idempotency import (
    Claim,
    ClaimLost,
    Completion,
    IdempotencyInProgress,
    KeyRecord,
    StoredResponse,
)
from service.stores import sql_audit
from service.stores import sql_statements as statements
from service.stores.base import (
    LegWrite,
    LegWriter,
    Store,
    TransferSpec,
    VersionConflict,
    Written,
    written_since_claim,
)
from service.stores.engines import build_engine
from service.stores.group_commit import GroupCommitter
from service.stores.sql_errors import begun, translated_errors
from service.stores.writer_lock import WriterLock
from service.tables import SETTINGS_ROW_ID, accounts, settings, transactions, transfers

T = TypeVar("T")
NAMED_PARAMETER = re.compile(r"(?<!:):([a-z_]+)")


@functools.lru_cache(maxsize=64)
def pyformat(sql: str) -> str:
    """`:name` (sqlite3's style) as `%(name)s` (psycopg's), with a literal `%` doubled."""
    return NAMED_PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))


class _SqlWriter(LegWriter):
    """Reads and writes inside one open transaction, in driver SQL."""

    def __init__(self, connection: Connection, store: SqlStore) -> None:
        self._connection = connection
        self._store = store
        self._locked: dict[int, BalanceState] = {}
        # The driver's own cursor: SQLAlchemy's execution context costs more
        # than the statements themselves on this path (profiled).
        self._cursor = connection.connection.cursor()

    def _row(self, sql: str, parameters: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a statement (or None), run on the driver's cursor."""
        self._cursor.execute(self._store.sql(sql), parameters)
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        return row

    def execute(self, statement: Executable) -> None:
        """A SQLAlchemy statement, for the rare writes that are not on the hot path."""
        self._connection.execute(statement)

    def row_count(self, sql: str, parameters: dict[str, Any]) -> int:
        self._cursor.execute(self._store.sql(sql), parameters)
        count: int = self._cursor.rowcount
        return count

    def _value(self, sql: str, parameters: dict[str, Any]) -> Any:
        row = self._row(sql, parameters)
        return None if row is None else row[0]

    def lock_rows(self, account_ids: Sequence[int], deadline: float) -> None:
        """SELECT ... FOR UPDATE one row at a time, in the order given, within one deadline.

        The locking read also reads the balance, so `read_states` under the
        lock costs no second round trip.
        """
        for position, account_id in enumerate(account_ids):
            if position > 0:  # the connection's lock_timeout bounds the first wait
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                self._connection.exec_driver_sql(f"SET LOCAL lock_timeout = {remaining_ms}")
            row = self._row(statements.LOCK_ROW, {"id": account_id})
            if row is None:
                raise NotFound(f"account {account_id} does not exist")
            self._locked[account_id] = BalanceState(account_id, row[0], row[1])

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        if all(account_id in self._locked for account_id in account_ids):
            return {account_id: self._locked[account_id] for account_id in account_ids}
        states = {}
        for account_id in account_ids:
            row = self._row(statements.READ_STATE, {"id": account_id})
            if row is None:
                raise NotFound(f"account {account_id} does not exist")
            states[account_id] = BalanceState(account_id, row[0], row[1])
        return states

    def claim_states(self, fences: Mapping[int, int]) -> dict[int, BalanceState]:
        states = {}
        for account_id in sorted(fences):  # the row locks' order: ascending ids
            row = self._row(statements.CLAIM_FENCE, {"id": account_id, "fence": fences[account_id]})
            if row is None:
                raise self._stale_or_missing(account_id)
            states[account_id] = BalanceState(account_id, row[0], row[1])
        return states

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        now = utc_now()
        stamp = self._store.timestamp(now)
        transfer_id = None
        if transfer is not None:
            transfer_id = self._value(
                statements.INSERT_TRANSFER,
                {
                    "from_account": transfer.from_account,
                    "to_account": transfer.to_account,
                    "amount": transfer.amount,
                    "lock_mode": lock_mode,
                    "created_at": stamp,
                },
            )
        entries = tuple(
            self._write_leg(write, lock_mode, transfer_id, now, stamp) for write in writes
        )
        recorded = None
        if transfer is not None and transfer_id is not None:
            recorded = Transfer(
                transfer_id,
                transfer.from_account,
                transfer.to_account,
                transfer.amount,
                lock_mode,
                now,
                entries,
            )
        written = Written(entries, recorded)
        if completion is not None:
            self.complete(completion, written)
        return written

    def complete(self, completion: Completion, result: object) -> None:
        """Store the key's response in this transaction, or undo it all (ClaimLost)."""
        self.store_response(completion.claim, completion.respond(result))

    def store_response(self, claim: Claim, response: StoredResponse) -> None:
        self._cursor.execute(
            self._store.sql(statements.COMPLETE_KEY),
            {
                "status": response.status,
                "headers": response.headers_json(),
                "body": response.body,
                "scope": claim.scope,
                "key": claim.key,
                "owner": claim.owner,
            },
        )
        if self._cursor.rowcount != 1:
            raise ClaimLost()

    def claim_key(self, claim: Claim) -> KeyRecord | None:
        owner = self._value(
            statements.CLAIM_KEY,
            {
                "scope": claim.scope,
                "key": claim.key,
                "fingerprint": claim.fingerprint,
                "owner": claim.owner,
                "now": self._store.timestamp(claim.now),
                "expires_at": self._store.timestamp(claim.expires_at),
                "stale_before": self._store.timestamp(claim.stale_before),
            },
        )
        if owner == claim.owner:
            return None
        row = self._row(statements.READ_KEY, {"scope": claim.scope, "key": claim.key})
        if row is None:  # released between the two statements: the caller tries again
            raise IdempotencyInProgress("the key was just released; retry")
        fingerprint, state, status, headers, body = row
        response = None
        if state == "done":
            response = StoredResponse.from_columns(status, body, headers)
        return KeyRecord(fingerprint, response)

    def _write_leg(
        self, write: LegWrite, lock_mode: str, transfer_id: int | None, now: dt.datetime, stamp: Any
    ) -> Transaction:
        leg = write.leg
        parameters: dict[str, Any] = {"id": leg.account_id, "updated_at": stamp}
        if write.new_balance is None:
            sql = statements.ADD_TO_BALANCE
            parameters.update(delta=leg.delta, max_balance=MAX_BALANCE_MINOR)
        elif write.fence is not None:
            sql = statements.SET_BALANCE_IF_FENCE
            parameters.update(
                new_balance=write.new_balance,
                fence=write.fence,
                expected_version=write.expected_version,
            )
        elif write.expected_version is None:
            sql = statements.SET_BALANCE
            parameters.update(new_balance=write.new_balance)
        else:
            sql = statements.SET_BALANCE_IF_VERSION
            parameters.update(
                new_balance=write.new_balance, expected_version=write.expected_version
            )
        entry = {
            "kind": leg.kind.value,
            "amount": leg.amount,
            "transfer_id": transfer_id,
            "lock_mode": lock_mode,
            "created_at": stamp,
        }
        if self._store.is_postgresql:  # one round trip for the balance and its entry
            row = self._row(statements.JOURNALED[sql], {**parameters, **entry})
            if row is None:
                raise self._missed_write(write)
            entry_id, balance_after = row
        else:
            balance_after = self._value(sql, parameters)
            if balance_after is None:
                raise self._missed_write(write)
            entry_id = self._value(
                statements.INSERT_TRANSACTION,
                {"account_id": leg.account_id, "balance_after": balance_after, **entry},
            )
        return Transaction(
            entry_id,
            leg.account_id,
            leg.kind,
            leg.amount,
            int(balance_after),
            transfer_id,
            lock_mode,
            now,
        )

    def _stale_or_missing(self, account_id: int) -> Exception:
        """Why a fenced statement matched no row: a newer token, or no such account."""
        row = self._row(statements.READ_FENCE, {"id": account_id})
        if row is None:
            return NotFound(f"account {account_id} does not exist")
        return StaleLock.on_account(account_id, int(row[0]))

    def _missed_write(self, write: LegWrite) -> Exception:
        """Why an UPDATE matched no row: the refusal to raise."""
        account_id = write.leg.account_id
        if write.fence is not None:
            refusal = self._stale_or_missing(account_id)
            if isinstance(refusal, StaleLock) and refusal.newer_token == write.fence:
                return written_since_claim(account_id, write.fence)  # the version moved
            return refusal
        if self._row(statements.READ_STATE, {"id": account_id}) is None:
            return NotFound(f"account {account_id} does not exist")
        if write.expected_version is not None:
            return VersionConflict(
                f"account {account_id} moved past version {write.expected_version}"
            )
        if write.leg.delta < 0:
            return InsufficientFunds(f"account {account_id} does not cover {write.leg.amount}")
        return BalanceLimitExceeded(f"account {account_id} would pass {MAX_BALANCE_MINOR}")

    def open_account(
        self,
        owner: str,
        currency: str,
        opening_balance: int,
        lock_mode: str,
        completion: Completion | None = None,
    ) -> Account:
        now = utc_now()
        stamp = self._store.timestamp(now)
        account_id = self._value(
            statements.INSERT_ACCOUNT,
            {
                "owner": owner,
                "currency": currency,
                "balance": opening_balance,
                "created_at": stamp,
            },
        )
        if opening_balance > 0:
            self._row(
                statements.INSERT_TRANSACTION,
                {
                    "account_id": account_id,
                    "kind": TransactionKind.OPEN.value,
                    "amount": opening_balance,
                    "balance_after": opening_balance,
                    "transfer_id": None,
                    "lock_mode": lock_mode,
                    "created_at": stamp,
                },
            )
        account = Account(account_id, owner, currency, opening_balance, 0, now, now)
        if completion is not None:
            self.complete(completion, account)
        return account


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
        self.is_postgresql = not self._is_sqlite
        self._lock_timeout_ms = lock_timeout_ms
        self._expected_revision = expected_revision
        self._committer: GroupCommitter | None = None
        self._writer_lock: WriterLock | None = None
        if self._is_sqlite and self._engine.url.database:
            self._writer_lock = WriterLock(self._engine.url.database)
            self._committer = GroupCommitter(
                self._engine, prepare=_begin_immediate, writer_lock=self._writer_lock.held
            )
        self.sql: Callable[[str], str] = (lambda sql: sql) if self._is_sqlite else pyformat

    def timestamp(self, moment: dt.datetime) -> Any:
        """A timestamp as a driver parameter, stored as SQLAlchemy's DateTime stores it."""
        if self._is_sqlite:
            return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return moment

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; SQLite writers take the write lock up front (IMMEDIATE)."""
        with translated_errors(), self._engine.connect() as connection:
            if self._is_sqlite:
                connection.execution_options(sqlite_begin="IMMEDIATE" if write else "DEFERRED")
            with begun(connection, write=write):  # a lost COMMIT: outcome unknown
                yield connection

    def _write(self, work: Callable[[_SqlWriter], T]) -> T:
        """Run `work` in a write transaction: the group commit's on SQLite, its own elsewhere."""
        if self._committer is not None:
            deadline = time.monotonic() + self._lock_timeout_ms / 1000
            return self._committer.run(
                lambda connection: work(_SqlWriter(connection, self)), deadline
            )
        with self._transaction(write=True) as connection:
            return work(_SqlWriter(connection, self))

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        with self._transaction(write=False) as connection:
            return _SqlWriter(connection, self).read_states(account_ids)

    def claim_states(self, fences: Mapping[int, int]) -> dict[int, BalanceState]:
        return self._write(lambda writer: writer.claim_states(fences))

    def write_legs(
        self,
        writes: Sequence[LegWrite],
        lock_mode: str,
        transfer: TransferSpec | None = None,
        completion: Completion | None = None,
    ) -> Written:
        return self._write(
            lambda writer: writer.write_legs(writes, lock_mode, transfer, completion)
        )

    def exclusive(
        self, account_ids: Sequence[int], work: Callable[[LegWriter], Written]
    ) -> Written:
        # SQLite: the transaction's BEGIN IMMEDIATE already holds the one
        # database-wide write lock, so it serializes everything and cannot deadlock.
        deadline = time.monotonic() + self._lock_timeout_ms / 1000

        def locked(writer: _SqlWriter) -> Written:
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
            lambda writer: writer.open_account(
                owner, currency, opening_balance, lock_mode, completion
            )
        )

    # ------------------------------------------------------------------ idempotency keys

    def claim_key(self, claim: Claim) -> KeyRecord | None:
        return self._write(lambda writer: writer.claim_key(claim))

    def finish_key(self, claim: Claim, response: StoredResponse) -> None:
        self._write(lambda writer: writer.store_response(claim, response))

    def release_key(self, claim: Claim) -> None:
        parameters = {"scope": claim.scope, "key": claim.key, "owner": claim.owner}
        self._write(lambda writer: writer.row_count(statements.RELEASE_KEY, parameters))

    def purge_keys(self, now: dt.datetime, limit: int) -> int:
        parameters = {"now": self.timestamp(now), "limit": limit}
        return self._write(lambda writer: writer.row_count(statements.PURGE_KEYS, parameters))

    def get_account(self, account_id: int) -> Account:
        with self._transaction(write=False) as connection:
            row = connection.execute(select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        return _account(row)

    def get_accounts(self, account_ids: Sequence[int]) -> dict[int, Account]:
        with self._transaction(write=False) as connection:
            rows = connection.execute(
                select(accounts).where(accounts.c.id.in_(list(account_ids)))
            ).all()
        found = {row.id: _account(row) for row in rows}
        for account_id in account_ids:
            if account_id not in found:
                raise NotFound(f"account {account_id} does not exist")
        return {account_id: found[account_id] for account_id in account_ids}

    def list_accounts(self, after: int, limit: int) -> list[Account]:
        with self._transaction(write=False) as connection:
            rows = connection.execute(
                select(accounts).where(accounts.c.id > after).order_by(accounts.c.id).limit(limit)
            ).all()
        return [_account(row) for row in rows]

    # ------------------------------------------------------------------ journal

    def get_transaction(self, transaction_id: int) -> Transaction:
        with self._transaction(write=False) as connection:
            row = connection.execute(
                select(transactions).where(transactions.c.id == transaction_id)
            ).first()
        if row is None:
            raise NotFound(f"transaction {transaction_id} does not exist")
        return _transaction(row)

    def list_transactions(
        self, account_id: int, before: int | None, limit: int
    ) -> list[Transaction]:
        query = select(transactions).where(transactions.c.account_id == account_id)
        if before is not None:
            query = query.where(transactions.c.id < before)
        with self._transaction(write=False) as connection:
            if (
                connection.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first()
                is None
            ):
                raise NotFound(f"account {account_id} does not exist")
            rows = connection.execute(query.order_by(transactions.c.id.desc()).limit(limit)).all()
        return [_transaction(row) for row in rows]

    def get_transfer(self, transfer_id: int) -> Transfer:
        with self._transaction(write=False) as connection:
            row = connection.execute(select(transfers).where(transfers.c.id == transfer_id)).first()
            if row is None:
                raise NotFound(f"transfer {transfer_id} does not exist")
            legs = connection.execute(
                select(transactions)
                .where(transactions.c.transfer_id == transfer_id)
                .order_by(transactions.c.id)
            ).all()
        return Transfer(
            row.id,
            row.from_account,
            row.to_account,
            row.amount,
            row.lock_mode,
            row.created_at,
            tuple(_transaction(leg) for leg in legs),
        )

    def audit_account(self, account_id: int) -> AccountAudit:
        with self._transaction(write=False) as connection:
            return sql_audit.audit_account(connection, account_id, named=self.sql)

    def audit_bank(self) -> BankAudit:
        with self._transaction(write=False) as connection:
            return sql_audit.audit_bank(connection, named=self.sql)

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
        self._write(lambda writer: writer.execute(statement))

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


def _begin_immediate(connection: Connection) -> None:
    connection.execution_options(sqlite_begin="IMMEDIATE")


def _account(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        owner=row.owner,
        currency=row.currency,
        balance=row.balance,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _transaction(row: Row[Any]) -> Transaction:
    return Transaction(
        id=row.id,
        account_id=row.account_id,
        kind=TransactionKind(row.kind),
        amount=row.amount,
        balance_after=row.balance_after,
        transfer_id=row.transfer_id,
        lock_mode=row.lock_mode,
        created_at=row.created_at,
    )
