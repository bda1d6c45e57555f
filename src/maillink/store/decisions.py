"""The decisions of messages: the stored messages a replay decides, and recording what changed
(the message's current decision and a line of its history, `decision_log`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Text, bindparam, cast, insert, select, update

from maillink.model import Message
from maillink.store import mail
from maillink.store.schema import decision_log, messages

_CHUNK = 500  # bound on the size of IN (...) lists


@dataclass(frozen=True)
class StoredDecision:
    """A message's decision as the store keeps it (items and candidates as `deal:12` refs)."""

    reason: str | None  # None: not decided yet
    person_ids: tuple[int, ...] = ()
    items: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class StoredMessage:
    """A stored message (its row's id and thread) as the model's `Message`, built once, with
    its current decision."""

    id: int
    thread_id: int
    message: Message
    decision: StoredDecision
    # The columns the message was built from: a later read reuses it while they are the same.
    source: tuple[Any, ...] = field(compare=False, repr=False)


def _source(thread_key: str, row: Any) -> tuple[Any, ...]:
    return (
        thread_key,
        row["provider_id"],
        row["message_id"],
        row["in_reply_to"],
        row["date"],
        row["direction"],
        row["headers"],
        row["problems"],
    )


def _listed(value: Any) -> tuple[Any, ...]:
    """A JSON list column read as text (most are empty: not decoded then)."""
    if value is None or value == "[]":
        return ()
    return tuple(json.loads(value) if isinstance(value, str) else value)


def _decision(row: Any) -> StoredDecision:
    return StoredDecision(
        reason=row["reason"],
        person_ids=_listed(row["person_ids"]),
        items=_listed(row["items"]),
        candidates=_listed(row["candidates"]),
        detail=row["detail"] or "",
    )


# The columns a replay reads: a message's own and its decision (not its bookkeeping). `headers`
# and `problems` come as their JSON text, decoded by `mail.message_from_row` only for a message
# not already built: the text is what PostgreSQL's json and SQLite keep, so it compares stably.
# The decision's lists too, as text: most are empty, and then not decoded (`_listed`).
_TO_DECIDE = [
    *(
        messages.c[name]
        for name in (
            "id",
            "thread_id",
            "provider_id",
            "message_id",
            "in_reply_to",
            "date",
            "direction",
        )
    ),
    cast(messages.c.headers, Text).label("headers"),
    cast(messages.c.problems, Text).label("problems"),
    messages.c.reason,
    *(cast(messages.c[name], Text).label(name) for name in ("person_ids", "items", "candidates")),
    messages.c.detail,
]


_MESSAGES_TO_DECIDE = (
    select(*_TO_DECIDE)
    .where(messages.c.thread_id.in_(bindparam("ids", expanding=True)))
    .order_by(messages.c.thread_id, messages.c.date, messages.c.provider_id)
)


def messages_to_decide(
    conn: Connection,
    account_email: str,
    threads: Mapping[int, mail.StoredThread],
    built: Mapping[int, StoredMessage] | None = None,
) -> dict[int, list[StoredMessage]]:
    """The messages of these threads, grouped by thread, oldest first, with their decisions.

    A message in `built` (by row id) whose stored columns are unchanged is reused as it is: the
    linker reads the threads before gathering CRM facts and again in its write transaction, and
    builds each `Message` once.
    """
    known = built or {}
    grouped: dict[int, list[StoredMessage]] = {tid: [] for tid in threads}
    ids = sorted(grouped)
    for start in range(0, len(ids), _CHUNK):
        rows = conn.execute(_MESSAGES_TO_DECIDE, {"ids": ids[start : start + _CHUNK]})
        for row in rows:
            mapping = row._mapping
            thread_key = threads[row.thread_id].key
            source = _source(thread_key, mapping)
            before = known.get(row.id)
            if before is not None and before.source == source:
                message = before.message
            else:
                message = mail.message_from_row(account_email, thread_key, mapping)
            grouped[row.thread_id].append(
                StoredMessage(row.id, row.thread_id, message, _decision(mapping), source)
            )
    return grouped


def record_decisions(
    conn: Connection,
    changed: Sequence[tuple[int, StoredDecision]],
    cause: str,
    now: datetime,
) -> None:
    """Record new decisions (message row id, decision): each message's current decision, and
    a line of its history with the cause (sync, choice, replay, crm_refusal…)."""
    if not changed:
        return
    rows = [
        {
            "b_id": row_id,
            "b_reason": d.reason,
            "b_person_ids": list(d.person_ids),
            "b_items": list(d.items),
            "b_candidates": list(d.candidates),
            "b_detail": d.detail,
        }
        for row_id, d in changed
    ]
    conn.execute(
        update(messages)
        .where(messages.c.id == bindparam("b_id"))
        .values(
            reason=bindparam("b_reason"),
            person_ids=bindparam("b_person_ids"),
            items=bindparam("b_items"),
            candidates=bindparam("b_candidates"),
            detail=bindparam("b_detail"),
            decided_at=now,
        ),
        rows,
    )
    conn.execute(
        insert(decision_log),
        [
            {
                "message_id": r["b_id"],
                "reason": r["b_reason"],
                "items": r["b_items"],
                "person_ids": r["b_person_ids"],
                "detail": r["b_detail"],
                "cause": cause,
                "decided_at": now,
            }
            for r in rows
        ],
    )
