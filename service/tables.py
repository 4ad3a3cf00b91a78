"""SQLAlchemy table definitions: the schema the Alembic migrations must match.

Core tables, not ORM classes: every statement the lock modes run is written
out explicitly in `service.stores.sql`, which is the point of this project.
The CHECK constraints are the last line of defence for the money invariants:
even a buggy code path cannot store a negative or over-limit balance.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from service.domain import MAX_BALANCE_MINOR

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias).
Identifier = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("owner", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # `fenced`: the newest fencing token that claimed the account (0: none yet).
    Column("fence", BigInteger, nullable=False, server_default="0"),
    CheckConstraint(f"balance >= 0 AND balance <= {MAX_BALANCE_MINOR}", name="balance_in_range"),
    CheckConstraint("version >= 0", name="version_not_negative"),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("from_account", Identifier, ForeignKey("accounts.id"), nullable=False),
    Column("to_account", Identifier, ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("lock_mode", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("from_account <> to_account", name="distinct_accounts"),
)

transactions = Table(
    "transactions",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("account_id", Identifier, ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("transfer_id", Identifier, ForeignKey("transfers.id"), nullable=True),
    Column("lock_mode", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
    # The hold a `capture` entry ended: the audit counts captures per hold.
    Column("hold_id", Identifier, nullable=True),
    CheckConstraint(
        "kind IN ('open', 'deposit', 'withdrawal', 'transfer_in', 'transfer_out', 'capture')",
        name="kind_known",
    ),
    Index("ix_transactions_account_id_id", "account_id", "id"),
    Index("ix_transactions_transfer_id", "transfer_id"),
    Index("ix_transactions_hold_id", "hold_id"),
)

# Holds (service.domain.holds): `status` is stored as written -- a pending
# hold past `expires_at` stays `pending` in the row and is expired to every
# reader, so `held` is the sum over (account_id, 'pending', expires_at > now),
# which the index serves.
holds = Table(
    "holds",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("account_id", Identifier, ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("captured_amount", BigInteger, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Written by a void alone: a second ending cannot erase the first's trace.
    Column("voided_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("status IN ('pending', 'captured', 'voided')", name="status_known"),
    Index("ix_holds_account_id_status_expires_at", "account_id", "status", "expires_at"),
)

# One row (id 1): the lock mode every worker and replica polls, so a
# `PUT /mode` reaches all of them through the shared database.
settings = Table(
    "settings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("lock_mode", String(16), nullable=False),
    Column("race_window_ms", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

SETTINGS_ROW_ID = 1

# Idempotency keys (service.idempotency): the claim of the first request with
# a key, and once it is done the response every repeat is answered.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("owner", String(32), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("response_status", Integer, nullable=True),
    Column("response_headers", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    CheckConstraint("state IN ('in_progress', 'done')", name="state_known"),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)
