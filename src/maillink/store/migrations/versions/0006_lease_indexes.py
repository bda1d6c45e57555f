"""Lease indexes that keep acquisition cheap with many mailboxes.

Revision ID: 0006
Revises: 0005

Forward only, like the others. `ix_leases_next_run_at` becomes `ix_leases_due` on
(next_run_at, account_id), the order in which due mailboxes are taken, so that taking a few of
many due mailboxes reads a few index entries and sorts nothing. `ix_leases_held` (partial: only
rows with an owner) lists the few held leases, so looking for holders that are gone no longer
reads every lease.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_leases_next_run_at", table_name="leases")
    op.create_index("ix_leases_due", "leases", ["next_run_at", "account_id"], unique=False)
    held = sa.text("owner IS NOT NULL")
    op.create_index(
        "ix_leases_held",
        "leases",
        ["owner"],
        unique=False,
        postgresql_where=held,
        sqlite_where=held,
    )
