"""What the Mailboxes page shows of each connected mailbox: its state and its counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from maillink.linking.facts import Reason
from maillink.store import accounts as store_accounts
from maillink.store import read_models, users
from maillink.store.accounts import Account
from maillink.store.read_models import item_titles, last_dates
from maillink.web.jobs import SyncJob, SyncJobs

__all__ = ["Mailbox", "item_titles", "last_dates", "state_of", "summaries", "visible_accounts"]

STATES = {
    "syncing": "Syncing…",
    "daemon": "Being synced by the daemon",
    "up_to_date": "Up to date",
    "needs_reauth": "Needs re-authorisation",
    "paused": "Paused",
    "not_synced": "Not synced yet",
    "problem": "Last sync had a problem",
}


@dataclass(frozen=True)
class Mailbox:
    id: int
    email: str
    provider: str
    state: str  # a key of STATES
    last_sync_at: datetime | None
    messages: int  # stored (headers only)
    linked: int  # linked to a deal, lead or project
    waiting: int  # threads waiting for a choice
    error: str | None
    owner: str | None  # the web user who connected it
    new_messages: int = 0  # stored by the sync running now

    @property
    def state_label(self) -> str:
        return STATES[self.state]

    @property
    def syncing(self) -> bool:
        return self.state in ("syncing", "daemon")

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "state": self.state,
            "state_label": self.state_label,
            "done": not self.syncing,
            "last_sync_at": self.last_sync_at.isoformat() if self.last_sync_at else None,
            "messages": self.messages,
            "linked": self.linked,
            "waiting": self.waiting,
            "error": self.error,
        }


def state_of(account: Account, job: SyncJob | None) -> str:
    if job is not None and job.running:
        return "daemon" if job.held_by else "syncing"
    if account.status == store_accounts.NEEDS_REAUTH:
        return "needs_reauth"
    if account.status == store_accounts.PAUSED:
        return "paused"
    if account.last_error:
        return "problem"
    if account.last_sync_at is None:
        return "not_synced"
    return "up_to_date"


def _linking(reason: str | None) -> bool:
    try:
        return reason is not None and Reason(reason).links_item
    except ValueError:
        return False


def summaries(
    conn: Connection, found: Sequence[Account], jobs: SyncJobs, *, with_owner: bool = False
) -> list[Mailbox]:
    """The mailboxes `found`, each with its counts, in their order."""
    ids = [a.id for a in found]
    stored: dict[int, int] = dict.fromkeys(ids, 0)
    linked: dict[int, int] = dict.fromkeys(ids, 0)
    waiting: dict[int, int] = dict.fromkeys(ids, 0)
    for account_id, reason, count in read_models.messages_by_reason(conn, ids):
        stored[account_id] += count
        if _linking(reason):
            linked[account_id] += count
    waiting.update(read_models.waiting_threads_count(conn, ids))
    owners = users.owner_emails(conn) if with_owner else {}
    out = []
    for account in found:
        job = jobs.get(account.id)
        state = state_of(account, job)
        error = account.last_error
        if job is not None and not job.running and job.error:
            error = job.error
        out.append(
            Mailbox(
                id=account.id,
                email=account.email,
                provider=account.provider,
                state=state,
                last_sync_at=account.last_sync_at,
                messages=stored[account.id],
                linked=linked[account.id],
                waiting=waiting[account.id],
                error=error if state in ("problem", "needs_reauth") else None,
                owner=owners.get(account.id),
                new_messages=job.messages if job is not None and job.running else 0,
            )
        )
    return out


def visible_accounts(conn: Connection, user: users.WebUser) -> list[Account]:
    """The mailboxes the user may see, by address."""
    every = store_accounts.all_accounts(conn)
    ids = users.visible_account_ids(conn, user)
    return every if ids is None else [a for a in every if a.id in set(ids)]
