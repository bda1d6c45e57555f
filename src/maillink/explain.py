"""Answers "why is (or isn't) this email linked?" and "which threads wait for a choice?"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from maillink.store import accounts, mail
from maillink.store.outbox import delivery_state
from maillink.store.read_models import (
    cached_items,
    decision_history,
    find_message,
    threads_with_key,
)


def _account_email(conn: Connection, account_id: int) -> str | None:
    account = accounts.get_by_id(conn, account_id)
    return account.email if account is not None else None


def _describe(ref: str, titles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    item = titles.get(ref, {})
    return {
        "item": ref,
        "title": item.get("title"),
        "status": item.get("status"),
        "created_at": item.get("created_at"),
        "closed_at": item.get("closed_at"),
    }


def _message(row: Any, log: list[Any], delivery: dict[str, Any] | None) -> dict[str, Any]:
    headers = row["headers"]
    return {
        "message": row["provider_id"],
        "message_id": row["message_id"],
        "date": row["date"].isoformat() if row["date"] else None,
        "direction": row["direction"],
        "from": headers.get("sender")[0] if headers.get("sender") else None,
        "subject": headers.get("subject", ""),
        "reason": row["reason"] or "undecided",
        "items": list(row["items"]),
        "person_ids": list(row["person_ids"]),
        "candidates": list(row["candidates"]),
        "detail": row["detail"],
        "problems": list(row["problems"]),
        # Its activity in the CRM: delivered, pending, retrying or failed, with the CRM's answer.
        "delivery": delivery,
        "history": [
            {
                "reason": entry.reason,
                "items": list(entry.items),
                "cause": entry.cause,
                "decided_at": entry.decided_at.isoformat(),
            }
            for entry in log
        ],
    }


def _thread(conn: Connection, thread: mail.StoredThread) -> dict[str, Any]:
    email = _account_email(conn, thread.account_id)
    rows = mail.thread_messages(conn, thread.id)
    logs = decision_history(conn, [row["id"] for row in rows])
    titles = cached_items(conn)
    return {
        "thread": thread.id,
        "account": email,
        "key": thread.key,
        "subject": thread.subject,
        "created_at": thread.first_message_at.isoformat() if thread.first_message_at else None,
        "linked": str(thread.link) if thread.link else None,
        "link_source": thread.link_source,
        "choice": str(thread.choice) if thread.choice else None,
        "waiting": thread.waiting,
        "candidates": [_describe(str(c), titles) for c in thread.candidates],
        "messages": [
            _message(row, logs[row["id"]], delivery_state(conn, row["key"])) for row in rows
        ],
    }


def explain(
    conn: Connection, target: str, account_ids: list[int] | None = None
) -> dict[str, Any] | None:
    """A thread (by its number or provider key) or a message (by Message-ID or provider id)."""
    target = target.strip()
    candidates: list[mail.StoredThread] = []
    if target.isdigit():
        found = mail.get_thread(conn, int(target))
        if found:
            candidates.append(found)
    if not candidates:
        message = find_message(conn, target)
        if message is not None:
            thread_id, provider_id = message
            thread = mail.get_thread(conn, thread_id)
            if thread:
                result = _thread(conn, thread)
                if account_ids is not None and thread.account_id not in account_ids:
                    return None
                result["focus"] = provider_id
                return result
        for thread_id in threads_with_key(conn, target):
            found = mail.get_thread(conn, thread_id)
            if found:
                candidates.append(found)
    for thread in candidates:
        if account_ids is None or thread.account_id in account_ids:
            return _thread(conn, thread)
    return None


def pending(conn: Connection, account_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Threads waiting for the user's choice, with their candidates."""
    titles = cached_items(conn)
    out = []
    for thread in mail.waiting_threads(conn, account_ids):
        email = _account_email(conn, thread.account_id)
        rows = mail.thread_messages(conn, thread.id)
        participants = sorted(
            {a[0] for row in rows for key in ("to", "cc") for a in row["headers"].get(key) or ()}
            | {row["headers"]["sender"][0] for row in rows if row["headers"].get("sender")}
        )
        out.append(
            {
                "thread": thread.id,
                "account": email,
                "subject": thread.subject,
                "created_at": thread.first_message_at.isoformat()
                if thread.first_message_at
                else None,
                "messages": len(rows),
                "participants": participants,
                "candidates": [_describe(str(c), titles) for c in thread.candidates],
            }
        )
    return out
