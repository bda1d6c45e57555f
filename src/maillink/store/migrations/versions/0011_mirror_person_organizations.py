"""The organization of each mirrored person, for the activity's organization link (issue 14).

Revision ID: 0011
Revises: 0010

Forward only, like the others. One nullable column; the mirror's state row is dropped so that
the next refresh lists every person again (with their organizations) instead of only those
changed since: until then the mirror is not used and reads go to the CRM, as without it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "crm_mirror_persons", sa.Column("organization_id", sa.String(length=64), nullable=True)
    )
    op.execute(sa.text("DELETE FROM crm_state WHERE name = 'crm_mirror'"))
