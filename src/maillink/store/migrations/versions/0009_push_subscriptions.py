"""Push subscriptions: the Gmail watches (and later Graph subscriptions) maillink keeps itself.

Revision ID: 0009
Revises: 0008

Forward only, like the others. A new table only: nothing existing is altered. Rows are made by
the daemons for the active mailboxes when push is configured (`[gmail] push_topic`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=False),
        sa.Column("external_id", sa.String(length=1000), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("renew_at", sa.DateTime(), nullable=True),
        sa.Column("history_id", sa.String(length=40), nullable=True),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "kind", "resource", name="uq_push_subscriptions_target"),
    )
    op.create_index(
        "ix_push_subscriptions_renew_at", "push_subscriptions", ["renew_at"], unique=False
    )
    op.create_index(
        "ix_push_subscriptions_external_id", "push_subscriptions", ["external_id"], unique=False
    )
