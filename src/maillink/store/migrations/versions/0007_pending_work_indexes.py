"""Partial indexes that let an idle round find "nothing to do" without scanning the mailbox.

Revision ID: 0007
Revises: 0006

Forward only, like the others. An idle round asks whether its mailbox has messages waiting for
a decision or CRM writes waiting for delivery (`store.outbox.work_left`). Both questions are
about a handful of rows among all of them: `ix_messages_undecided` holds only the undecided
messages, `ix_activities_undelivered` only the outbox rows not yet delivered (and not failed).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    undecided = sa.text("reason IS NULL")
    op.create_index(
        "ix_messages_undecided",
        "messages",
        ["account_id"],
        unique=False,
        postgresql_where=undecided,
        sqlite_where=undecided,
    )
    undelivered = sa.text("delivered_version < desired_version AND failed_at IS NULL")
    op.create_index(
        "ix_activities_undelivered",
        "activities",
        ["owner_message_id"],
        unique=False,
        postgresql_where=undelivered,
        sqlite_where=undelivered,
    )
