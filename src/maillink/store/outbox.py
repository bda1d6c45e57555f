"""The outbox's rows as people see them: what is pending, what failed and why, and the marks
a refusal leaves (docs/crm-writes.md). `maillink.outbox` delivers; this module holds the
statements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, func, select, update

from maillink.store import cache
from maillink.store.schema import accounts, activities, messages


def pending_count(conn: Connection) -> int:
    """Writes waiting to be delivered (the failed ones wait for a person instead)."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(activities)
            .where(
                activities.c.delivered_version < activities.c.desired_version,
                activities.c.failed_at.is_(None),
            )
        ).scalar_one()
    )


def _failed_rows() -> Any:
    return (
        select(activities, messages.c.account_id, messages.c.thread_id, messages.c.provider_id)
        .select_from(activities.outerjoin(messages, messages.c.id == activities.c.owner_message_id))
        .where(
            activities.c.failed_at.is_not(None),
            activities.c.delivered_version < activities.c.desired_version,
        )
    )


def failed_count(conn: Connection, account_id: int | None = None) -> int:
    """Writes the CRM refused for good, all of them or those of one mailbox's emails."""
    rows = _failed_rows()
    if account_id is not None:
        rows = rows.where(messages.c.account_id == account_id)
    return int(conn.execute(select(func.count()).select_from(rows.subquery())).scalar_one())


def failed_deliveries(conn: Connection, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The failed writes, oldest refusal first: which email, what it would write, the CRM's answer."""
    query = _failed_rows().order_by(activities.c.failed_at, activities.c.key)
    if keys is not None:
        query = query.where(activities.c.key.in_(list(keys)))
    emails = dict(conn.execute(select(accounts.c.id, accounts.c.email)).tuples().all())
    found = []
    for row in conn.execute(query).mappings():
        desired = row["desired"] or {}
        found.append(
            {
                "key": row["key"],
                "account": emails.get(row["account_id"]),
                "thread": row["thread_id"],
                "message": row["provider_id"],
                "subject": desired.get("subject"),
                "items": list(desired.get("items") or ()),
                "person_ids": list(desired.get("person_ids") or ()),
                "activity": row["crm_id"],
                "attempts": row["attempts"],
                "failed_at": row["failed_at"].isoformat() if row["failed_at"] else None,
                "crm_answer": row["last_error"],
            }
        )
    return found


def delivery_state(conn: Connection, key: str) -> dict[str, Any] | None:
    """How the write of one email stands: delivered, pending, retrying or failed (+ the answer)."""
    row = conn.execute(select(activities).where(activities.c.key == key)).mappings().first()
    if row is None:
        return None
    if row["delivered_version"] >= row["desired_version"]:
        state = "delivered"
    elif row["failed_at"] is not None:
        state = "failed"
    elif row["last_error"]:
        state = "retrying"
    else:
        state = "pending"
    return {
        "state": state,
        "activity": row["crm_id"],
        "attempts": row["attempts"],
        "failed_at": row["failed_at"].isoformat() if row["failed_at"] else None,
        "crm_answer": row["last_error"] if state in ("failed", "retrying") else None,
    }


def make_failed_due(conn: Connection, keys: Sequence[str] | None = None) -> int:
    """Clear the failed mark (and the re-decision mark) of these failed writes, or of all."""
    failed = and_(
        activities.c.failed_at.is_not(None),
        activities.c.delivered_version < activities.c.desired_version,
    )
    query = update(activities).where(failed)
    if keys is not None:
        query = query.where(activities.c.key.in_(list(keys)))
    values = {"failed_at": None, "redecided_version": None, "next_attempt_at": None}
    return int(conn.execute(query.values(**values)).rowcount)


def mark_failed(
    conn: Connection,
    key: str,
    attempts: int,
    answer: str,
    now: datetime,
    *,
    activity_gone: bool = False,
) -> None:
    """Refused for good: kept with the CRM's answer, not sent again until retried. When the
    activity itself is gone from the CRM, a retry creates it again."""
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": answer[:2000],
        "failed_at": now,
        "next_attempt_at": None,
    }
    if activity_gone:
        values.update(crm_id=None, attempt_started_at=None)
    conn.execute(update(activities).where(activities.c.key == key).values(**values))


def versions(conn: Connection, key: str) -> Row[Any, Any] | None:
    """The row's desired version and the version a refusal last had decided again."""
    return conn.execute(
        select(activities.c.desired_version, activities.c.redecided_version).where(
            activities.c.key == key
        )
    ).first()


def to_decide_again(
    conn: Connection, row: Any, person_ids: Iterable[int], answer: str
) -> int | None:
    """After a refusal naming a gone person or item: expire the caches of the thread's addresses
    and of `person_ids`, leave the thread's messages undecided (their writes wait for the new
    decision, which the next round makes if nobody makes it now), and mark the row's version as
    decided again. Returns the thread to decide, None when the email has no stored owner."""
    owner = None
    if row["owner_message_id"] is not None:
        owner = conn.execute(
            select(messages.c.thread_id).where(messages.c.id == row["owner_message_id"])
        ).scalar()
    emails: set[str] = set()
    if owner is not None:
        for (headers,) in conn.execute(
            select(messages.c.headers).where(messages.c.thread_id == owner)
        ):
            emails.update(_participants(headers))
        conn.execute(update(messages).where(messages.c.thread_id == owner).values(reason=None))
    cache.forget(conn, emails=emails, person_ids=person_ids)
    conn.execute(
        update(activities)
        .where(activities.c.key == row["key"])
        .values(
            redecided_version=row["desired_version"],
            last_error=answer[:2000],
            next_attempt_at=None,
        )
    )
    return int(owner) if owner is not None else None


def _participants(headers: Any) -> set[str]:
    """The lower-cased addresses of a stored message's From/To/Cc/Bcc."""
    found: set[str] = set()
    if not isinstance(headers, dict):
        return found
    sender = headers.get("sender")
    pairs = [sender] if sender else []
    for name in ("to", "cc", "bcc"):
        pairs.extend(headers.get(name) or ())
    for pair in pairs:
        if pair and isinstance(pair[0], str):
            found.add(pair[0].strip().lower())
    return found
