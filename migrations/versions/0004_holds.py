"""Holds: authorize now, capture or void later (DESIGN §3 "Holds").

A `holds` table (its status stored as written: a pending hold past its
`expires_at` is expired to every reader, so no job ever has to mark it),
the index `held` is summed through, and on the journal a `capture` kind
with the `hold_id` it ended. Captures are not a foreign key on purpose: the
audit must be able to see a capture of a hold that went wrong.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Identifier = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
KINDS_BEFORE = "kind IN ('open', 'deposit', 'withdrawal', 'transfer_in', 'transfer_out')"
KINDS_AFTER = "kind IN ('open', 'deposit', 'withdrawal', 'transfer_in', 'transfer_out', 'capture')"


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("account_id", Identifier, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("captured_amount", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_holds_account_id_accounts")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_holds_amount_positive")),
        sa.CheckConstraint(
            "status IN ('pending', 'captured', 'voided')", name=op.f("ck_holds_status_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index(
        "ix_holds_account_id_status_expires_at", "holds", ["account_id", "status", "expires_at"]
    )
    with op.batch_alter_table("transactions") as batch:
        batch.add_column(sa.Column("hold_id", Identifier, nullable=True))
        batch.drop_constraint(op.f("ck_transactions_kind_known"), type_="check")
        batch.create_check_constraint(op.f("ck_transactions_kind_known"), KINDS_AFTER)
        batch.create_index("ix_transactions_hold_id", ["hold_id"])


def downgrade() -> None:
    op.execute("DELETE FROM transactions WHERE kind = 'capture'")
    with op.batch_alter_table("transactions") as batch:
        batch.drop_index("ix_transactions_hold_id")
        batch.drop_constraint(op.f("ck_transactions_kind_known"), type_="check")
        batch.create_check_constraint(op.f("ck_transactions_kind_known"), KINDS_BEFORE)
        batch.drop_column("hold_id")
    op.drop_index("ix_holds_account_id_status_expires_at", table_name="holds")
    op.drop_table("holds")
