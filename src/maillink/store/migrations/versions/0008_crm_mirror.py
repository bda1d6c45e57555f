"""The CRM mirror: the CRM's persons (one row per address) and items, and what went stale.

Revision ID: 0008
Revises: 0007

Forward only, like the others. New tables only: nothing existing is altered. They start empty;
the mirror's state lives in crm_state ("crm_mirror") and is written by its first fill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_mirror_persons",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("person_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("email", "person_id"),
    )
    op.create_index(
        "ix_crm_mirror_persons_person", "crm_mirror_persons", ["person_id"], unique=False
    )
    op.create_table(
        "crm_mirror_items",
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("kind", "item_id"),
    )
    op.create_index("ix_crm_mirror_items_person", "crm_mirror_items", ["person_id"], unique=False)
    op.create_table(
        "crm_mirror_stale",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("marked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
