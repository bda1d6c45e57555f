"""Single-use, expiring sign-in links, and server-side web sessions.

Revision ID: 0005
Revises: 0004

Forward only, like the others. `web_users` gains two nullable columns (plain ALTER TABLE ADD
COLUMN: no batch copy of the table on SQLite) and `web_sessions` is new. Links issued before this
revision are given the lifetime they would have had: one day from their user's creation, and a
user who already signed in has spent theirs. Sessions from before end (their cookies name no row).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LINK_LIFETIME = timedelta(hours=24)


def upgrade() -> None:
    op.add_column("web_users", sa.Column("link_expires_at", sa.DateTime(), nullable=True))
    op.add_column("web_users", sa.Column("link_used_at", sa.DateTime(), nullable=True))
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["web_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_web_sessions_user", "web_sessions", ["user_id"], unique=False)

    users = sa.table(
        "web_users",
        sa.column("id", sa.Integer()),
        sa.column("created_at", sa.DateTime()),
        sa.column("last_sign_in_at", sa.DateTime()),
        sa.column("link_expires_at", sa.DateTime()),
        sa.column("link_used_at", sa.DateTime()),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(users.c.id, users.c.created_at, users.c.last_sign_in_at))
    for user_id, created_at, last_sign_in_at in rows.fetchall():
        conn.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(link_expires_at=created_at + LINK_LIFETIME, link_used_at=last_sign_in_at)
        )
