"""What people are shown, read from the store: `maillink explain` and `pending`, the web app's
Mailboxes page, the counts of `maillink accounts`, the demo's summary. The shaping into pages and
JSON stays with those callers; the statements are here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select

from maillink.store.schema import decision_log, item_cache, messages, threads


# -- explain -------------------------------------------------------------------------------------
def cached_items(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every item the CRM caches know (as JSON: title, status, dates), by ref (`deal:12`)."""
    found: dict[str, dict[str, Any]] = {}
    for (items,) in conn.execute(select(item_cache.c["items"])):
        for item in items:
            found[item["ref"]] = item
    return found


def decision_history(conn: Connection, message_ids: Sequence[int]) -> dict[int, list[Any]]:
    """Each message's past decisions (rows with reason, items, cause, decided_at), oldest first."""
    logs: dict[int, list[Any]] = {message_id: [] for message_id in message_ids}
    if logs:
        for entry in conn.execute(
            select(decision_log)
            .where(decision_log.c.message_id.in_(list(logs)))
            .order_by(decision_log.c.id)
        ):
            logs[entry.message_id].append(entry)
    return logs


def find_message(conn: Connection, target: str) -> tuple[int, str] | None:
    """The thread and provider id of the message named by its Message-ID (with or without
    <>), its provider id or its maillink-id."""
    bare = target.strip("<>")
    row = conn.execute(
        select(messages.c.thread_id, messages.c.provider_id).where(
            or_(
                messages.c.message_id == bare,
                messages.c.provider_id == target,
                messages.c.key == bare,
            )
        )
    ).first()
    return (row.thread_id, row.provider_id) if row is not None else None


def threads_with_key(conn: Connection, key: str) -> list[int]:
    """The threads (of any mailbox) whose provider key is `key`."""
    return list(conn.execute(select(threads.c.id).where(threads.c.key == key)).scalars())


# -- the Mailboxes page and `maillink accounts` ---------------------------------------------------
def messages_by_reason(conn: Connection, account_ids: Sequence[int]) -> list[tuple[int, Any, int]]:
    """(mailbox, reason or None, count) of the stored messages of these mailboxes."""
    if not account_ids:
        return []
    rows = conn.execute(
        select(messages.c.account_id, messages.c.reason, func.count())
        .where(messages.c.account_id.in_(list(account_ids)))
        .group_by(messages.c.account_id, messages.c.reason)
    )
    return [(account_id, reason, count) for account_id, reason, count in rows]


def waiting_threads_count(conn: Connection, account_ids: Sequence[int]) -> dict[int, int]:
    """How many threads of each of these mailboxes wait for a choice (absent: none)."""
    if not account_ids:
        return {}
    rows = conn.execute(
        select(threads.c.account_id, func.count())
        .where(threads.c.account_id.in_(list(account_ids)), threads.c.waiting.is_(True))
        .group_by(threads.c.account_id)
    )
    return {account_id: count for account_id, count in rows}


def last_dates(conn: Connection, thread_ids: Sequence[int]) -> dict[int, datetime | None]:
    """The date of each thread's newest message."""
    if not thread_ids:
        return {}
    rows = conn.execute(
        select(messages.c.thread_id, func.max(messages.c.date))
        .where(messages.c.thread_id.in_(list(thread_ids)))
        .group_by(messages.c.thread_id)
    )
    return {thread_id: latest for thread_id, latest in rows}


def item_titles(conn: Connection, refs: Sequence[str], person_ids: Iterable[int]) -> dict[str, str]:
    """The titles the CRM cache knows for these items (`deal:12` → "Renewal 2026"), among the
    items of these persons only: a page never names an item of someone else's contacts."""
    wanted = set(refs)
    persons = sorted(set(person_ids))
    titles: dict[str, str] = {}
    if wanted and persons:
        rows = conn.execute(
            select(item_cache.c["items"]).where(item_cache.c.person_id.in_(persons))
        )
        for (items,) in rows:
            for item in items:
                if item.get("ref") in wanted and item.get("title"):
                    titles[item["ref"]] = item["title"]
    return titles


# -- the demo's summary --------------------------------------------------------------------------
def reason_counts(conn: Connection) -> dict[str | None, int]:
    """How many stored messages have each reason code (None: not decided yet), every mailbox."""
    rows = conn.execute(select(messages.c.reason, func.count()).group_by(messages.c.reason))
    return {reason: count for reason, count in rows}
