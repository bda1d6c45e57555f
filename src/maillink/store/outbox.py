"""The outbox's rows as people see them: what is pending, what failed and why, and the marks
a refusal leaves (docs/crm-writes.md). `maillink.outbox` delivers; this module holds the
statements."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Exists, Row, and_, bindparam, func, or_, select, tuple_, update

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
    emails = {i: e for i, e in conn.execute(select(accounts.c.id, accounts.c.email))}
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


# -- delivery: what `maillink.outbox` asks of the rows ---------------------------------------------
_CHUNK = 400  # bound on the size of IN (...) lists (two parameters a row)
_RELEASE = (
    update(activities)
    .where(
        activities.c.key == bindparam("b_key"),
        activities.c.attempts == bindparam("b_claimed"),
        activities.c.crm_id.is_(None),
    )
    .values(attempt_started_at=bindparam("b_started"), attempts=bindparam("b_attempts"))
)
_DELIVERED = (
    update(activities)
    .where(activities.c.key == bindparam("b_key"))
    .values(
        crm_id=bindparam("b_crm_id"),
        delivered_version=bindparam("b_version"),
        last_error=None,
        next_attempt_at=None,
        updated_at=bindparam("b_now"),
    )
)


def due_activities(
    conn: Connection,
    limit: int,
    now: datetime,
    *,
    exclude: Collection[str] = (),
    account_id: int | None = None,
) -> list[Any]:
    """The rows whose write is due by `now`, oldest first (mappings), but those in `exclude`;
    with `account_id`, only the rows whose email was stored first from that mailbox."""
    query = (
        select(activities)
        .select_from(activities.outerjoin(messages, messages.c.id == activities.c.owner_message_id))
        .where(
            activities.c.delivered_version < activities.c.desired_version,
            or_(activities.c.next_attempt_at.is_(None), activities.c.next_attempt_at <= now),
            activities.c.failed_at.is_(None),
            # An email waiting to be decided again (after a refusal) waits for its decision.
            or_(activities.c.owner_message_id.is_(None), messages.c.reason.is_not(None)),
        )
        .order_by(activities.c.updated_at, activities.c.key)
        .limit(limit + len(exclude))
    )
    if account_id is not None:
        query = query.where(messages.c.account_id == account_id)
    rows = conn.execute(query)
    return [row._mapping for row in rows if row.key not in exclude][:limit]


def claim_creates(conn: Connection, rows: Sequence[Any], started: datetime) -> set[str]:
    """Mark these rows' creates as attempted; the keys this caller claimed. A compare-and-set on
    the attempt count: of two processes about to create the same activity, only one goes on.
    One statement for many rows (RETURNING names the rows it changed)."""
    claimed: set[str] = set()
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        claimed.update(
            conn.execute(
                update(activities)
                .where(
                    # The keys alone first: SQLite finds rows by a row value only by scanning.
                    activities.c.key.in_([row["key"] for row in chunk]),
                    tuple_(activities.c.key, activities.c.attempts).in_(
                        [(row["key"], row["attempts"]) for row in chunk]
                    ),
                    activities.c.crm_id.is_(None),
                )
                .values(attempt_started_at=started, attempts=activities.c.attempts + 1)
                .returning(activities.c.key)
            ).scalars()
        )
    return claimed


def release_claims(conn: Connection, rows: Sequence[Any]) -> None:
    """Undo `claim_creates` for rows whose create was never sent (the delivery stopped first),
    so that the next delivery creates them without a look-up. A row another process claimed
    since (its attempt count moved again) is left as it is."""
    if not rows:
        return
    conn.execute(
        _RELEASE,
        [
            {
                "b_key": row["key"],
                "b_claimed": row["attempts"] + 1,
                "b_attempts": row["attempts"],
                "b_started": row["attempt_started_at"],
            }
            for row in rows
        ],
    )


def mark_delivered(conn: Connection, delivered: Sequence[tuple[Any, str]], now: datetime) -> None:
    """Record (row, crm id) pairs as delivered at the rows' desired versions (executemany)."""
    if not delivered:
        return
    conn.execute(
        _DELIVERED,
        [
            {
                "b_key": row["key"],
                "b_crm_id": crm_id,
                "b_version": row["desired_version"],
                "b_now": now,
            }
            for row, crm_id in delivered
        ],
    )


def record_found(conn: Connection, key: str, crm_id: str) -> None:
    """A create whose outcome was unknown did reach the CRM: its activity is `crm_id`."""
    conn.execute(update(activities).where(activities.c.key == key).values(crm_id=crm_id))


def retry_later(
    conn: Connection, key: str, attempts: int, error: str, next_attempt_at: datetime
) -> None:
    """A transient failure: the write is due again at `next_attempt_at`."""
    conn.execute(
        update(activities)
        .where(activities.c.key == key)
        .values(attempts=attempts, last_error=error[:2000], next_attempt_at=next_attempt_at)
    )


def left_for_later(conn: Connection, account_id: int) -> tuple[int, int]:
    """This mailbox's CRM writes not yet delivered, and its messages not yet decided.

    Writes the CRM refused for good (`failed_at`) wait for a person, not for a later run: they
    are counted apart (`maillink outbox list`)."""
    writes = conn.execute(
        select(func.count())
        .select_from(activities)
        .join(messages, messages.c.id == activities.c.owner_message_id)
        .where(
            messages.c.account_id == account_id,
            activities.c.delivered_version < activities.c.desired_version,
            activities.c.failed_at.is_(None),
        )
    ).scalar_one()
    undecided = conn.execute(
        select(func.count())
        .select_from(messages)
        .where(messages.c.account_id == account_id, messages.c.reason.is_(None))
    ).scalar_one()
    return int(writes), int(undecided)


@dataclass(frozen=True)
class WorkLeft:
    """What a mailbox's round has to do besides pulling: messages to decide, CRM writes not
    delivered yet (`pending`), and among them writes due now (`due`)."""

    undecided: bool
    pending: bool
    due: bool


def work_probes(account_id: int, now: datetime) -> tuple[Exists, Exists, Exists]:
    """The three EXISTS probes of `work_left` (undecided, pending, due), to be read alone or
    beside the mailbox's row (`accounts.round_start`)."""
    owned = activities.join(messages, messages.c.id == activities.c.owner_message_id)
    waiting = (
        messages.c.account_id == account_id,
        activities.c.delivered_version < activities.c.desired_version,
        activities.c.failed_at.is_(None),
    )
    undecided = (
        select(messages.c.id)
        .where(messages.c.account_id == account_id, messages.c.reason.is_(None))
        .exists()
    )
    pending = select(activities.c.key).select_from(owned).where(*waiting).exists()
    due = (
        select(activities.c.key)
        .select_from(owned)
        .where(
            *waiting,
            or_(activities.c.next_attempt_at.is_(None), activities.c.next_attempt_at <= now),
            messages.c.reason.is_not(None),
        )
        .exists()
    )
    return undecided, pending, due


def work_left(conn: Connection, account_id: int, now: datetime) -> WorkLeft:
    """The mailbox's pending work, in one read (three EXISTS probes): an idle round asks this
    once instead of opening the outbox."""
    undecided, pending, due = work_probes(account_id, now)
    row = conn.execute(
        select(undecided.label("undecided"), pending.label("pending"), due.label("due"))
    ).one()
    return WorkLeft(undecided=bool(row.undecided), pending=bool(row.pending), due=bool(row.due))
