"""The one schema of the state store, as SQLAlchemy Core tables (SQLite and PostgreSQL alike).

The tables are created and upgraded by the Alembic migrations in `migrations/`; this module is what
the queries use. Keep both in step: a change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in, the same out, on SQLite (which has no time zones) too."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is UTC:  # the usual case: no conversion
            return value.replace(tzinfo=None)
        if value.tzinfo is None:
            raise ValueError("maillink stores timezone-aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("provider", String(20), nullable=False),  # gmail | microsoft
    Column("status", String(20), nullable=False, default="active"),  # active|paused|needs_reauth
    Column("token", Text, nullable=True),  # encrypted (Fernet) JSON of the provider's tokens
    Column("scopes", Text, nullable=False, default=""),
    Column("aliases", JSON, nullable=False, default=list),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_sync_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("backfill_since", UTCDateTime, nullable=True),
    # user (the rep's own consent) | tenant (Microsoft client credentials) | domain (Google
    # domain-wide delegation)
    Column("connected_via", String(20), nullable=False, server_default="user"),
    Column("directory_id", String(255), nullable=True),  # the provider's id of a directory user
    Column("crm_user_id", String(64), nullable=True),  # the CRM owner when set by hand
)

cursors = Table(
    "cursors",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(100), primary_key=True),  # "mailbox" for Gmail, the folder for Graph
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

threads = Table(
    "threads",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("first_message_at", UTCDateTime, nullable=True),
    Column("subject", Text, nullable=False, default=""),
    # the thread's link after the last replay (rules 3-5 of docs/linking-rules.md)
    Column("link", String(80), nullable=True),  # "deal:12"
    Column("link_source", String(10), nullable=True),  # auto | user
    Column("waiting", Boolean, nullable=False, default=False),
    Column("candidates", JSON, nullable=False, default=list),
    # the user's word on the thread (rule 5)
    Column("choice", String(80), nullable=True),
    Column("unlinked", Boolean, nullable=False, default=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("account_id", "key", name="uq_threads_account_key"),
)
Index("ix_threads_waiting", threads.c.waiting)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("provider_id", String(255), nullable=False),
    Column("thread_id", Integer, ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(1000), nullable=False),  # the team-wide identity (Message-ID)
    Column("message_id", String(1000), nullable=True),
    Column("in_reply_to", String(1000), nullable=True),
    Column("date", UTCDateTime, nullable=True),
    Column("direction", String(10), nullable=False),
    Column("headers", JSON, nullable=False),  # sender/to/cc/bcc/subject/snippet/labels/date_header
    Column("problems", JSON, nullable=False, default=list),
    Column("removed", Boolean, nullable=False, default=False),
    # the current decision
    Column("reason", String(40), nullable=True),
    Column("person_ids", JSON, nullable=False, default=list),
    Column("items", JSON, nullable=False, default=list),
    Column("candidates", JSON, nullable=False, default=list),
    Column("detail", Text, nullable=False, default=""),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("account_id", "provider_id", name="uq_messages_account_provider_id"),
)
Index("ix_messages_thread", messages.c.thread_id)
Index("ix_messages_key", messages.c.key)

decision_log = Table(
    "decision_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("items", JSON, nullable=False, default=list),
    Column("person_ids", JSON, nullable=False, default=list),
    Column("detail", Text, nullable=False, default=""),
    Column("cause", String(40), nullable=False),  # sync | choice | replay
    Column("decided_at", UTCDateTime, nullable=False),
)
Index("ix_decision_log_message", decision_log.c.message_id)

# The outbox: one row per email (its maillink-id), the desired activity and what was delivered.
activities = Table(
    "activities",
    metadata,
    Column("key", String(1000), primary_key=True),
    Column(
        "owner_message_id", Integer, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    ),
    Column("desired", JSON, nullable=False),
    Column("desired_version", Integer, nullable=False, default=1),
    Column("delivered_version", Integer, nullable=False, default=0),
    Column("crm_id", String(64), nullable=True),
    Column("attempt_started_at", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # Refused for good by the CRM (its answer in last_error): not retried until `outbox retry`.
    Column("failed_at", UTCDateTime, nullable=True),
    # The desired version whose refusal (a gone person or item) made the thread be decided again.
    Column("redecided_version", Integer, nullable=True),
)
Index("ix_activities_pending", activities.c.delivered_version, activities.c.desired_version)
# The rows still to write, oldest first (`outbox.due_activities`): a partial index stays as small
# as the outbox's backlog, however many emails were delivered.
_UNDELIVERED = (activities.c.delivered_version < activities.c.desired_version) & (
    activities.c.failed_at.is_(None)
)
Index(
    "ix_activities_due",
    activities.c.updated_at,
    activities.c.key,
    sqlite_where=_UNDELIVERED,
    postgresql_where=_UNDELIVERED,
)

person_cache = Table(
    "person_cache",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("persons", JSON, nullable=False),  # [] caches "no such person"
    Column("fetched_at", UTCDateTime, nullable=False),
)

item_cache = Table(
    "item_cache",
    metadata,
    Column("person_id", Integer, primary_key=True),
    Column("items", JSON, nullable=False),
    Column("fetched_at", UTCDateTime, nullable=False),
)

crm_state = Table(
    "crm_state",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# -- web users (issue 4): who signs in to `maillink serve`, and which mailboxes are theirs ----------
web_users = Table(
    "web_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column(
        "token_hash", String(64), nullable=False, unique=True
    ),  # sha256 hex of the sign-in token
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_sign_in_at", UTCDateTime, nullable=True),
    # the sign-in link (issue 9): signs in once, until it expires; NULL expiry: no valid link
    Column("link_expires_at", UTCDateTime, nullable=True),
    Column("link_used_at", UTCDateTime, nullable=True),
)

# Server-side web sessions (issue 9): the cookie holds a random id, this table its sha256. A session
# ends when its row is deleted (sign-out, `users remove`, a new link, `keys rotate`) or expires.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("web_users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)
Index("ix_web_sessions_user", web_sessions.c.user_id)

# The web user who connected the mailbox (a rep also owns the mailboxes whose address is theirs).
# No ON DELETE clause: SQLite does not report one for a column added by ALTER TABLE, so the
# migration could not be checked against this schema; removing a user clears it first.
accounts.append_column(Column("owner_user_id", Integer, ForeignKey("web_users.id"), nullable=True))

# -- leases and schedules (issue 5): which daemon works on a mailbox now, and when it is due next --
# One row per mailbox. A daemon owns a mailbox while `owner` is its id and `expires_at` is ahead;
# `generation` grows at every acquisition, and every write of the holder checks it (the fence), so
# that a daemon which lost its lease cannot write. `next_run_at` is shared by every daemon.
leases = Table(
    "leases",
    metadata,
    Column(
        "account_id",
        Integer,
        ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("owner", String(200), nullable=True),  # hostname-pid-random of the daemon; NULL: free
    Column("generation", BigInteger, nullable=False, default=0),
    Column("acquired_at", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("next_run_at", UTCDateTime, nullable=False),
    Column("failures", Integer, nullable=False, default=0),  # failed rounds in a row (backoff)
)
# The due mailboxes in acquisition order (no sort), and the few leases that are held (issue 11).
Index("ix_leases_due", leases.c.next_run_at, leases.c.account_id)
Index(
    "ix_leases_held",
    leases.c.owner,
    postgresql_where=leases.c.owner.is_not(None),
    sqlite_where=leases.c.owner.is_not(None),
)

# What an idle round asks of its mailbox: any message undecided, any CRM write undelivered? Both
# partial, so that the answer reads a few index entries, not every row (issue 11; migration 0007).
Index(
    "ix_messages_undecided",
    messages.c.account_id,
    postgresql_where=messages.c.reason.is_(None),
    sqlite_where=messages.c.reason.is_(None),
)
_UNDELIVERED = (activities.c.delivered_version < activities.c.desired_version) & (
    activities.c.failed_at.is_(None)
)
Index(
    "ix_activities_undelivered",
    activities.c.owner_message_id,
    postgresql_where=_UNDELIVERED,
    sqlite_where=_UNDELIVERED,
)

# -- the CRM mirror (issue 11; migration 0008): the CRM's persons and items, when it is small enough
# to list, so that a new address costs no CRM read. Its state (complete, high-water mark, when last
# refreshed) is the crm_state row "crm_mirror"; `store.mirror` holds the statements.
crm_mirror_persons = Table(
    "crm_mirror_persons",
    metadata,
    Column("email", String(320), primary_key=True),  # lower-cased
    Column("person_id", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False, default=""),
    Column("organization_id", String(64), nullable=True),  # migration 0011
)
Index("ix_crm_mirror_persons_person", crm_mirror_persons.c.person_id)

crm_mirror_items = Table(
    "crm_mirror_items",
    metadata,
    Column("kind", String(10), primary_key=True),  # deal | lead (projects: the adapter's list)
    Column("item_id", String(64), primary_key=True),
    Column("person_id", Integer, nullable=True),
    Column("title", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(10), nullable=False),
    Column("closed_at", UTCDateTime, nullable=True),
)
Index("ix_crm_mirror_items_person", crm_mirror_items.c.person_id)

# What a webhook (or a refusal) said changed since the last refresh: "person:12", "email:a@b.c".
# The mirror does not answer for these until a refresh that started after `marked_at` read them.
crm_mirror_stale = Table(
    "crm_mirror_stale",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("marked_at", UTCDateTime, nullable=False),
)

# -- push subscriptions (issue 12): the watches and subscriptions maillink keeps at the providers --
# One row per mailbox and watched resource: Gmail's `users.watch` ("mailbox"), later one Graph
# subscription per folder. `renew_at` is when it must be (re)made: a daemon claims a due row by
# moving it forward (compare-and-set), so that several daemons never call the provider twice.
push_subscriptions = Table(
    "push_subscriptions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(20), nullable=False),  # gmail | microsoft
    Column("kind", String(40), nullable=False),  # gmail_watch | graph_subscription
    Column("resource", String(255), nullable=False),  # "mailbox" (Gmail), the folder (Graph)
    Column("external_id", String(1000), nullable=True),  # Gmail: the topic; Graph: its id
    Column("state", String(20), nullable=False),  # pending | active | failed | stopped
    Column("expires_at", UTCDateTime, nullable=True),  # when the provider drops it
    Column("renew_at", UTCDateTime, nullable=True),  # when to (re)make it; NULL: nothing due
    Column("history_id", String(40), nullable=True),  # Gmail: the historyId watch answered
    Column("secret", Text, nullable=True),  # encrypted like tokens (Graph's clientState)
    Column("last_error", Text, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("target", Text, nullable=True),  # the notification URL (Graph) or topic it points at
    UniqueConstraint("account_id", "kind", "resource", name="uq_push_subscriptions_target"),
)
Index("ix_push_subscriptions_renew_at", push_subscriptions.c.renew_at)
Index("ix_push_subscriptions_external_id", push_subscriptions.c.external_id)
