"""The outbox finds due writes through an index of the undelivered rows only.

Revision ID: 0012
Revises: 0011

Forward only, like the others. `due_activities` asked for the oldest undelivered rows by
scanning every activity (its `delivered_version < desired_version` compares two columns, which
no plain index can seek): a backfill's cost per write grew with the number of emails already
delivered. A partial index holds only the rows still to write, in the order they are taken.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UNDELIVERED = "delivered_version < desired_version AND failed_at IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_activities_due",
        "activities",
        ["updated_at", "key"],
        unique=False,
        sqlite_where=sa.text(UNDELIVERED),
        postgresql_where=sa.text(UNDELIVERED),
    )
