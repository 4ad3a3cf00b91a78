"""Fencing tokens: each account remembers the newest lock token that claimed it.

The `fenced` lock mode records its Redis lock's token here and writes a
balance only while the account still holds that token, so a lock holder
whose lease ran out cannot overwrite a newer holder's work. Existing
accounts start at 0, below every token (tokens start at 1).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: both SQLite and PostgreSQL add the column in place.
    op.add_column(
        "accounts", sa.Column("fence", sa.BigInteger(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    # SQLite (3.35 and later) and PostgreSQL both drop a plain column in place.
    op.drop_column("accounts", "fence")
