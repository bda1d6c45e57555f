"""Outbox refusals: writes the CRM refused for good, and re-decisions after a refusal.

Revision ID: 0004
Revises: 0003

Forward only, like 0001-0003. Two nullable columns on `activities`, added with plain
ALTER TABLE ADD COLUMN (no table copy on SQLite):
- `failed_at`: when the CRM refused the write for good (a 4xx other than 401/403/429); such a
  row is not retried until `maillink outbox retry` clears it. `last_error` keeps the CRM's answer.
- `redecided_version`: the desired version after which a refusal naming a gone person or item
  made maillink decide the email's thread again; a second such refusal of that version fails.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("activities", sa.Column("failed_at", sa.DateTime(), nullable=True))
    op.add_column("activities", sa.Column("redecided_version", sa.Integer(), nullable=True))
