"""Accounts connected for a whole team, their CRM owner, and where a push subscription points.

Revision ID: 0010
Revises: 0009

Forward only, like the others. Columns only, all with a default or nullable, so existing rows
keep their meaning:
- accounts.connected_via: "user" (the rep's own consent, as before), "tenant" (Microsoft
  client credentials) or "domain" (Google domain-wide delegation);
- accounts.directory_id: the provider's id of the user (Graph user id, Google directory id) for
  mailboxes found in a directory;
- accounts.crm_user_id: the CRM user who owns this mailbox's emails, when set by hand (otherwise
  matched by email);
- push_subscriptions.target: the notification URL (Graph) or topic (Gmail) a subscription was made
  for, so that a changed configuration re-points it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("connected_via", sa.String(length=20), nullable=False, server_default="user"),
    )
    op.add_column("accounts", sa.Column("directory_id", sa.String(length=255), nullable=True))
    op.add_column("accounts", sa.Column("crm_user_id", sa.String(length=64), nullable=True))
    op.add_column("push_subscriptions", sa.Column("target", sa.Text(), nullable=True))
