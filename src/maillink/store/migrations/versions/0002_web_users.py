"""Web users of `maillink serve`, and the owner of each connected mailbox.

Revision ID: 0002
Revises: 0001

Forward only, like 0001. The new column is added with ALTER TABLE ADD COLUMN … REFERENCES, so batch
mode never copies `accounts` on SQLite: a copy drops the old table, and with foreign keys on, that
drop would cascade to every cursor, thread and message of the mailboxes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_sign_in_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner_user_id", sa.Integer(), sa.ForeignKey("web_users.id"), nullable=True),
            inline_references=True,  # SQLite cannot add the constraint apart (needs alembic 1.18.2)
        )
