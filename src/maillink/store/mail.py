"""Messages (headers only) and threads: saving pages idempotently, reading threads back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    false,
    insert,
    literal_column,
    null,
    select,
    update,
)

from maillink.model import Address, Direction, ItemRef, Message
from maillink.store.schema import messages, threads

_CHUNK = 500  # bound on the size of IN (...) lists


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _addr(a: Address) -> list[str]:
    return [a.email, a.name]


def _headers(m: Message) -> dict[str, Any]:
    return {
        "sender": _addr(m.sender) if m.sender else None,
        "to": [_addr(a) for a in m.to],
        "cc": [_addr(a) for a in m.cc],
        "bcc": [_addr(a) for a in m.bcc],
        "subject": m.subject,
        "snippet": m.snippet,
        "labels": list(m.labels),
        "references": list(m.references),
        "date_header": m.date_header,
    }


def _merge_headers(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A later copy of a message fills in what is missing; it never blanks what is stored."""
    merged = dict(old)
    for key, value in new.items():
        if value not in (None, "", []):
            merged[key] = value
    return merged


def _json(value: Any) -> Any:
    """A JSON column as read: decoded already, or its text (read with `cast(..., Text)`)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def message_from_row(account: str, thread_key: str, m: Any) -> Message:
    """The `Message` of a messages row (`headers` and `problems` decoded, or as JSON text)."""
    h = _json(m["headers"])

    def addresses(key: str) -> tuple[Address, ...]:
        return tuple(Address(e, n) for e, n in h.get(key) or ())

    sender = h.get("sender")
    return Message(
        account=account,
        provider_id=m["provider_id"],
        thread_key=thread_key,
        message_id=m["message_id"],
        date=m["date"],
        direction=Direction(m["direction"]),
        sender=Address(sender[0], sender[1]) if sender else None,
        to=addresses("to"),
        cc=addresses("cc"),
        bcc=addresses("bcc"),
        subject=h.get("subject", ""),
        snippet=h.get("snippet", ""),
        in_reply_to=m["in_reply_to"],
        references=tuple(h.get("references") or ()),
        labels=tuple(h.get("labels") or ()),
        date_header=h.get("date_header", ""),
        problems=tuple(_json(m["problems"]) or ()),
    )


def known_messages(conn: Connection, account_id: int, provider_ids: Iterable[str]) -> set[str]:
    ids = sorted(set(provider_ids))
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(
            conn.execute(
                select(messages.c.provider_id).where(
                    messages.c.account_id == account_id, messages.c.provider_id.in_(chunk)
                )
            ).scalars()
        )
    return found


def thread_dates(conn: Connection, account_id: int, keys: Iterable[str]) -> dict[str, datetime]:
    wanted = sorted(set(keys))
    dates: dict[str, datetime] = {}
    for chunk in _chunks(wanted):
        rows = conn.execute(
            select(threads.c.key, threads.c.first_message_at).where(
                threads.c.account_id == account_id,
                threads.c.key.in_(chunk),
                threads.c.first_message_at.is_not(None),
            )
        )
        dates.update({key: first for key, first in rows})
    return dates


def _ensure_threads(
    conn: Connection,
    account_id: int,
    firsts: dict[str, datetime | None],
    subjects: dict[str, str],
) -> dict[str, int]:
    """Thread ids by key, creating missing threads; a thread's first date only moves earlier."""
    keys = sorted(firsts)
    existing: dict[str, tuple[int, datetime | None]] = {}
    for chunk in _chunks(keys):
        for tid, key, first in conn.execute(
            select(threads.c.id, threads.c.key, threads.c.first_message_at).where(
                threads.c.account_id == account_id, threads.c.key.in_(chunk)
            )
        ):
            existing[key] = (tid, first)
    now = datetime.now(UTC)
    ids: dict[str, int] = {}
    earlier: list[dict[str, Any]] = []
    new_rows: list[dict[str, Any]] = []
    for key in keys:
        first = firsts[key]
        if key in existing:
            tid, stored = existing[key]
            ids[key] = tid
            if first is not None and (stored is None or first < stored):
                earlier.append({"b_id": tid, "b_first": first})
            continue
        new_rows.append(
            {
                "account_id": account_id,
                "key": key,
                "first_message_at": first,
                "subject": subjects.get(key, ""),
                "waiting": False,
                "candidates": [],
                "unlinked": False,
                "updated_at": now,
            }
        )
    if earlier:
        conn.execute(
            update(threads)
            .where(threads.c.id == bindparam("b_id"))
            .values(first_message_at=bindparam("b_first"), updated_at=now),
            earlier,
        )
    if new_rows:  # one statement for the page's new threads, their ids returned
        inserted = conn.execute(insert(threads).returning(threads.c.id, threads.c.key), new_rows)
        ids.update({key: tid for tid, key in inserted})
    return ids


# A new message: not removed, not decided yet. The constant columns are written in the SQL
# itself, not bound and converted again for each row of the page (executemany).
_EMPTY_LIST: ColumnElement[Any] = literal_column("'[]'")
_INSERT_MESSAGE = insert(messages).values(
    removed=false(),
    reason=null(),
    person_ids=_EMPTY_LIST,
    items=_EMPTY_LIST,
    candidates=_EMPTY_LIST,
    detail=literal_column("''"),
)


def save_messages(
    conn: Connection,
    account_id: int,
    batch: Sequence[Message],
    thread_firsts: dict[str, datetime],
) -> set[int]:
    """Store a page's messages (idempotent: a message seen again is merged, never doubled).

    Returns the ids of the threads touched, whose decisions must be replayed.
    """
    firsts: dict[str, datetime | None] = {}
    subjects: dict[str, str] = {}
    for m in batch:
        candidates = [d for d in (thread_firsts.get(m.thread_key), m.date) if d is not None]
        current = firsts.get(m.thread_key)
        if current is not None:
            candidates.append(current)
        firsts[m.thread_key] = min(candidates) if candidates else None
        subjects.setdefault(m.thread_key, m.subject)
    thread_ids = _ensure_threads(conn, account_id, firsts, subjects)

    stored: dict[str, Any] = {}
    ids = sorted({m.provider_id for m in batch})
    for chunk in _chunks(ids):
        for row in conn.execute(
            select(messages.c.id, messages.c.provider_id, messages.c.headers).where(
                messages.c.account_id == account_id, messages.c.provider_id.in_(chunk)
            )
        ):
            stored[row.provider_id] = row
    now = datetime.now(UTC)
    new_rows = []
    for m in batch:
        if m.provider_id in stored:
            row = stored[m.provider_id]
            conn.execute(
                update(messages)
                .where(messages.c.id == row.id)
                .values(headers=_merge_headers(row.headers, _headers(m)), removed=False)
            )
            continue
        stored[m.provider_id] = True  # the same id twice in one page
        new_rows.append(
            {
                "account_id": account_id,
                "provider_id": m.provider_id,
                "thread_id": thread_ids[m.thread_key],
                "key": m.key,
                "message_id": m.message_id,
                "in_reply_to": m.in_reply_to,
                "date": m.date,
                "direction": m.direction.value,
                "headers": _headers(m),
                "problems": list(m.problems),
                "created_at": now,
            }
        )
    if new_rows:
        conn.execute(_INSERT_MESSAGE, new_rows)
    return set(thread_ids.values())


def mark_removed(conn: Connection, account_id: int, provider_ids: Sequence[str]) -> None:
    """The messages left the mailbox; their decisions and activities stay (rule 6 keeps history)."""
    for chunk in _chunks(sorted(set(provider_ids))):
        conn.execute(
            update(messages)
            .where(and_(messages.c.account_id == account_id, messages.c.provider_id.in_(chunk)))
            .values(removed=True)
        )


@dataclass(frozen=True)
class StoredThread:
    id: int
    account_id: int
    key: str
    first_message_at: datetime | None
    subject: str
    link: ItemRef | None
    link_source: str | None
    waiting: bool
    candidates: tuple[ItemRef, ...]
    choice: ItemRef | None
    unlinked: bool


def _thread(row: Any) -> StoredThread:
    m = row._mapping
    return StoredThread(
        id=m["id"],
        account_id=m["account_id"],
        key=m["key"],
        first_message_at=m["first_message_at"],
        subject=m["subject"],
        link=ItemRef.parse(m["link"]) if m["link"] else None,
        link_source=m["link_source"],
        waiting=bool(m["waiting"]),
        candidates=tuple(ItemRef.parse(c) for c in m["candidates"] or ()),
        choice=ItemRef.parse(m["choice"]) if m["choice"] else None,
        unlinked=bool(m["unlinked"]),
    )


def get_thread(conn: Connection, thread_id: int) -> StoredThread | None:
    row = conn.execute(select(threads).where(threads.c.id == thread_id)).first()
    return _thread(row) if row else None


def thread_messages(conn: Connection, thread_id: int) -> list[Any]:
    """The thread's message rows (mappings), oldest first."""
    rows = conn.execute(
        select(messages)
        .where(messages.c.thread_id == thread_id)
        .order_by(messages.c.date, messages.c.provider_id)
    )
    return [row._mapping for row in rows]


def waiting_threads(
    conn: Connection, account_ids: Sequence[int] | None = None
) -> list[StoredThread]:
    query = select(threads).where(threads.c.waiting.is_(True)).order_by(threads.c.id)
    if account_ids is not None:
        query = query.where(threads.c.account_id.in_(account_ids))
    return [_thread(row) for row in conn.execute(query)]


def set_choice(conn: Connection, thread_id: int, choice: ItemRef | None, unlinked: bool) -> None:
    conn.execute(
        update(threads)
        .where(threads.c.id == thread_id)
        .values(
            choice=str(choice) if choice else None,
            unlinked=unlinked,
            updated_at=datetime.now(UTC),
        )
    )


_THREADS_BY_ID = select(threads).where(threads.c.id.in_(bindparam("ids", expanding=True)))


def threads_by_id(conn: Connection, thread_ids: Sequence[int]) -> dict[int, StoredThread]:
    found: dict[int, StoredThread] = {}
    for chunk in _chunks(sorted(set(thread_ids))):
        for row in conn.execute(_THREADS_BY_ID, {"ids": list(chunk)}):
            found[row.id] = _thread(row)
    return found


def messages_of_threads(conn: Connection, thread_ids: Sequence[int]) -> dict[int, list[Any]]:
    """Message rows (mappings) of many threads at once, grouped by thread, oldest first."""
    grouped: dict[int, list[Any]] = {tid: [] for tid in thread_ids}
    for chunk in _chunks(sorted(set(thread_ids))):
        rows = conn.execute(
            select(messages)
            .where(messages.c.thread_id.in_(chunk))
            .order_by(messages.c.thread_id, messages.c.date, messages.c.provider_id)
        )
        for row in rows:
            grouped[row.thread_id].append(row._mapping)
    return grouped


def undecided_threads(conn: Connection, account_id: int, limit: int = 1000) -> list[int]:
    """Threads holding messages stored but not yet decided (the CRM was unreachable, a crash)."""
    return list(
        conn.execute(
            select(messages.c.thread_id)
            .where(messages.c.account_id == account_id, messages.c.reason.is_(None))
            .distinct()
            .limit(limit)
        ).scalars()
    )


def thread_outcome_values(thread_id: int, outcome: Any) -> dict[str, Any]:
    """One row of `save_thread_outcomes`, from a `ThreadOutcome`."""
    return {
        "b_id": thread_id,
        "b_link": str(outcome.linked) if outcome.linked else None,
        "b_link_source": outcome.link_source,
        "b_waiting": outcome.waiting,
        "b_candidates": [str(c) for c in outcome.candidates],
    }


def save_thread_outcomes(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Each thread's link, waiting flag and candidates after a replay, in one statement
    (executemany)."""
    if not rows:
        return
    conn.execute(
        update(threads)
        .where(threads.c.id == bindparam("b_id"))
        .values(
            link=bindparam("b_link"),
            link_source=bindparam("b_link_source"),
            waiting=bindparam("b_waiting"),
            candidates=bindparam("b_candidates"),
            updated_at=datetime.now(UTC),
        ),
        list(rows),
    )
