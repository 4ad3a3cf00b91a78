"""Initial schema: accounts, transfers, the journal, and the shared mode setting.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MAX_BALANCE_MINOR = 2**53 - 1  # frozen copy: a migration never follows later code
Identifier = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            f"balance >= 0 AND balance <= {MAX_BALANCE_MINOR}",
            name=op.f("ck_accounts_balance_in_range"),
        ),
        sa.CheckConstraint("version >= 0", name=op.f("ck_accounts_version_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "transfers",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("from_account", Identifier, nullable=False),
        sa.Column("to_account", Identifier, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("lock_mode", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transfers_amount_positive")),
        sa.CheckConstraint(
            "from_account <> to_account", name=op.f("ck_transfers_distinct_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["from_account"], ["accounts.id"], name=op.f("fk_transfers_from_account_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["to_account"], ["accounts.id"], name=op.f("fk_transfers_to_account_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
    )
    op.create_table(
        "transactions",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("account_id", Identifier, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", Identifier, nullable=True),
        sa.Column("lock_mode", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transactions_amount_positive")),
        sa.CheckConstraint(
            "kind IN ('open', 'deposit', 'withdrawal', 'transfer_in', 'transfer_out')",
            name=op.f("ck_transactions_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_transactions_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_transactions_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
    )
    op.create_index("ix_transactions_account_id_id", "transactions", ["account_id", "id"])
    op.create_index("ix_transactions_transfer_id", "transactions", ["transfer_id"])
    op.create_table(
        "settings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("lock_mode", sa.String(16), nullable=False),
        sa.Column("race_window_ms", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settings")),
    )
    # No row yet: the first start stores its configured mode (see service._seed_mode).


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_index("ix_transactions_transfer_id", table_name="transactions")
    op.drop_index("ix_transactions_account_id_id", table_name="transactions")
    op.drop_table("transactions")
    op.drop_table("transfers")
    op.drop_table("accounts")
