"""The SQL store (SQLite or PostgreSQL) on SQLAlchemy Core.

Every statement a lock mode relies on is spelled out here: the plain
`UPDATE ... SET balance = :value` a read-modify-write ends with, the
`WHERE version = :read_version` of optimistic locking, the guarded
`SET balance = balance + :delta WHERE balance + :delta BETWEEN 0 AND max`
of the atomic mode, and the exclusive lock (`BEGIN IMMEDIATE` on SQLite,
`SELECT ... FOR UPDATE` in the given order on PostgreSQL).

Database errors are translated at this boundary into domain refusals
(LockTimeout, StoreUnavailable) or `RetryableConflict`; anything else is a
bug and propagates.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, inspect, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.domain import (
    MAX_BALANCE_MINOR,
    Account,
    AccountAudit,
    BalanceLimitExceeded,
    BalanceState,
    InsufficientFunds,
    LockMode,
    LockTimeout,
    ModeSetting,
    NotFound,
    StoreUnavailable,
    Transaction,
    TransactionKind,
    Transfer,
    audit_account,
    utc_now,
)
from service.stores.base import (
    LegWrite,
    LegWriter,
    RetryableConflict,
    Store,
    TransferSpec,
    VersionConflict,
    Written,
)
from service.stores.engines import build_engine
from service.tables import SETTINGS_ROW_ID, accounts, settings, transactions, transfers

# PostgreSQL SQLSTATEs this store turns into refusals.
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
UNDEFINED_TABLE = "42P01"


@contextmanager
def translated_errors() -> Iterator[None]:
    """Map driver errors to what a client may be told; re-raise the rest."""
    try:
        yield
    except sa_exc.TimeoutError as error:  # pool checkout waited too long
        raise StoreUnavailable("no database connection became free in time") from error
    except sa_exc.DBAPIError as error:
        state = getattr(error.orig, "sqlstate", None)
        message = str(error.orig).lower()
        if state == DEADLOCK_DETECTED:
            raise RetryableConflict("deadlock detected", deadlock=True) from error
        if state == SERIALIZATION_FAILURE:
            raise RetryableConflict("serialization failure", deadlock=False) from error
        if state in (LOCK_NOT_AVAILABLE, QUERY_CANCELED) or "database is locked" in message:
            raise LockTimeout("the lock wait ran out") from error
        if state == UNDEFINED_TABLE or "no such table" in message:
            raise StoreUnavailable(
                "the schema is not migrated (run `bankrace db upgrade`)"
            ) from error
        if error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            raise StoreUnavailable("the database cannot be reached") from error
        raise


class _SqlWriter(LegWriter):
    """Reads and writes inside one open transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        rows = self._connection.execute(
            select(accounts.c.id, accounts.c.balance, accounts.c.version).where(
                accounts.c.id.in_(account_ids)
            )
        ).all()
        states = {row.id: BalanceState(row.id, row.balance, row.version) for row in rows}
        for account_id in account_ids:
            if account_id not in states:
                raise NotFound(f"account {account_id} does not exist")
        return states

    def write_legs(
        self, writes: Sequence[LegWrite], lock_mode: str, transfer: TransferSpec | None = None
    ) -> Written:
        now = utc_now()
        transfer_id = None
        if transfer is not None:
            transfer_id = self._connection.execute(
                insert(transfers)
                .values(
                    from_account=transfer.from_account,
                    to_account=transfer.to_account,
                    amount=transfer.amount,
                    lock_mode=lock_mode,
                    created_at=now,
                )
                .returning(transfers.c.id)
            ).scalar_one()
        entries = tuple(self._write_leg(write, lock_mode, transfer_id, now) for write in writes)
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
        return Written(entries, recorded)

    def _write_leg(
        self, write: LegWrite, lock_mode: str, transfer_id: int | None, now: Any
    ) -> Transaction:
        leg = write.leg
        statement = update(accounts).where(accounts.c.id == leg.account_id)
        if write.new_balance is not None:
            statement = statement.values(balance=write.new_balance)
            if write.expected_version is not None:
                statement = statement.where(accounts.c.version == write.expected_version)
        else:
            moved = accounts.c.balance + leg.delta
            statement = statement.values(balance=moved).where(
                and_(moved >= 0, moved <= MAX_BALANCE_MINOR)
            )
        statement = statement.values(version=accounts.c.version + 1, updated_at=now)
        balance_after = self._connection.execute(
            statement.returning(accounts.c.balance)
        ).scalar_one_or_none()
        if balance_after is None:
            raise self._missed_write(write)
        entry_id = self._connection.execute(
            insert(transactions)
            .values(
                account_id=leg.account_id,
                kind=leg.kind.value,
                amount=leg.amount,
                balance_after=balance_after,
                transfer_id=transfer_id,
                lock_mode=lock_mode,
                created_at=now,
            )
            .returning(transactions.c.id)
        ).scalar_one()
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

    def _missed_write(self, write: LegWrite) -> Exception:
        """Why an UPDATE matched no row: the refusal to raise."""
        account_id = write.leg.account_id
        exists = self._connection.execute(
            select(accounts.c.id).where(accounts.c.id == account_id)
        ).scalar_one_or_none()
        if exists is None:
            return NotFound(f"account {account_id} does not exist")
        if write.expected_version is not None:
            return VersionConflict(
                f"account {account_id} moved past version {write.expected_version}"
            )
        if write.leg.delta < 0:
            return InsufficientFunds(f"account {account_id} does not cover {write.leg.amount}")
        return BalanceLimitExceeded(f"account {account_id} would pass {MAX_BALANCE_MINOR}")


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
        self._lock_timeout_ms = lock_timeout_ms
        self._expected_revision = expected_revision

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self, *, write: bool, snapshot: bool = False) -> Iterator[Connection]:
        """One transaction; SQLite writers take the write lock up front (IMMEDIATE)."""
        with translated_errors(), self._engine.connect() as connection:
            if self._is_sqlite:
                connection.execution_options(sqlite_begin="IMMEDIATE" if write else "DEFERRED")
            elif snapshot:
                # One consistent view across several statements (audits).
                connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield connection

    def read_states(self, account_ids: Sequence[int]) -> dict[int, BalanceState]:
        with self._transaction(write=False) as connection:
            return _SqlWriter(connection).read_states(account_ids)

    def write_legs(
        self, writes: Sequence[LegWrite], lock_mode: str, transfer: TransferSpec | None = None
    ) -> Written:
        with self._transaction(write=True) as connection:
            return _SqlWriter(connection).write_legs(writes, lock_mode, transfer)

    @contextmanager
    def exclusive(self, account_ids: Sequence[int]) -> Iterator[LegWriter]:
        # SQLite: BEGIN IMMEDIATE already holds the one database-wide write
        # lock, so it serializes everything and cannot deadlock.
        with self._transaction(write=True) as connection:
            if not self._is_sqlite:
                self._lock_rows(connection, account_ids)
            yield _SqlWriter(connection)

    def _lock_rows(self, connection: Connection, account_ids: Sequence[int]) -> None:
        """SELECT ... FOR UPDATE one row at a time, in the order given, within one deadline."""
        deadline = time.monotonic() + self._lock_timeout_ms / 1000
        for account_id in account_ids:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            connection.execute(text(f"SET LOCAL lock_timeout = {remaining_ms}"))
            locked = connection.execute(
                select(accounts.c.id).where(accounts.c.id == account_id).with_for_update()
            ).scalar_one_or_none()
            if locked is None:
                raise NotFound(f"account {account_id} does not exist")

    # ------------------------------------------------------------------ accounts

    def open_account(
        self, owner: str, currency: str, opening_balance: int, lock_mode: str
    ) -> Account:
        now = utc_now()
        with self._transaction(write=True) as connection:
            row = connection.execute(
                insert(accounts)
                .values(
                    owner=owner,
                    currency=currency,
                    balance=opening_balance,
                    version=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(*accounts.c)
            ).one()
            if opening_balance > 0:
                connection.execute(
                    insert(transactions).values(
                        account_id=row.id,
                        kind=TransactionKind.OPEN.value,
                        amount=opening_balance,
                        balance_after=opening_balance,
                        transfer_id=None,
                        lock_mode=lock_mode,
                        created_at=now,
                    )
                )
            return _account(row)

    def get_account(self, account_id: int) -> Account:
        with self._transaction(write=False) as connection:
            row = connection.execute(select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise NotFound(f"account {account_id} does not exist")
        return _account(row)

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

    def audit(self, account_id: int | None = None) -> Iterator[AccountAudit]:
        balances = select(accounts.c.id, accounts.c.balance).order_by(accounts.c.id)
        journal = select(transactions).order_by(transactions.c.account_id, transactions.c.id)
        if account_id is not None:
            balances = balances.where(accounts.c.id == account_id)
            journal = journal.where(transactions.c.account_id == account_id)
        with self._transaction(write=False, snapshot=True) as connection:
            balance_rows = connection.execute(balances).all()
            if account_id is not None and not balance_rows:
                raise NotFound(f"account {account_id} does not exist")
            journal_rows = connection.execute(journal).all()
        by_account = {
            key: [_transaction(row) for row in group]
            for key, group in itertools.groupby(journal_rows, key=lambda row: row.account_id)
        }
        return iter(
            [audit_account(row.id, row.balance, by_account.get(row.id, [])) for row in balance_rows]
        )

    # ------------------------------------------------------------------ settings

    def load_mode(self) -> ModeSetting | None:
        with self._transaction(write=False) as connection:
            row = connection.execute(
                select(settings.c.lock_mode, settings.c.race_window_ms).where(
                    settings.c.id == SETTINGS_ROW_ID
                )
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
        with self._transaction(write=True) as connection:
            connection.execute(statement)

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
        self._engine.dispose()


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
