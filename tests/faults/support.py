"""Helpers of the crash and fault tests: a workspace with small pages, and the invariants.

The invariants are checked against the sandboxes, which know what really happened:
- nothing lost: every message of every mailbox (drafts, spam and trash aside) is stored;
- nothing duplicated: every activity the store wants exists exactly once in the CRM, with the
  links the store decided, and the CRM holds no other activity;
- cursors: a stored cursor never claims more than is committed (see `check_cursors`);
- nothing left in the outbox.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select

from maillink.outbox import pending_count
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.google.gmail import decode_token
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.pipedrive.data import note_lines
from maillink.sandbox.workspace import write_workspace
from maillink.store import Store
from maillink.store.schema import accounts, activities, cursors, messages

SKIPPED = frozenset({"DRAFT", "SPAM", "TRASH"})


def workspace(
    folder: Path,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
    domain: str,
    *,
    page_size: int = 500,
    lease_seconds: int = 60,
    gmail: str = "quota_units_per_minute = 0",
) -> Path:
    """The sandboxes' workspace, with `page_size` messages a page, mailbox leases of
    `lease_seconds` and the `[gmail]` keys given."""
    config = write_workspace(folder, google, pipedrive, internal_domains=[domain])
    text = config.read_text().replace("[gmail]\n", f"[gmail]\n{gmail}\n", 1)
    sync = f"\n[sync]\npage_size = {page_size}\nlease_seconds = {lease_seconds}\n"
    config.write_text(text + sync)
    return config


def _stored(store: Store) -> dict[str, set[str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(accounts.c.email, messages.c.provider_id).join(
                messages, messages.c.account_id == accounts.c.id
            )
        )
        found: dict[str, set[str]] = {}
        for email, provider_id in rows:
            found.setdefault(email, set()).add(provider_id)
    return found


def _mailbox(google: GoogleSandbox, email: str) -> Any:
    return google._mailbox(email)  # the sandbox's own record of the mailbox


def _cursors(store: Store) -> list[tuple[str, str, str]]:
    with store.engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                select(accounts.c.email, cursors.c.name, cursors.c.value).join(
                    cursors, cursors.c.account_id == accounts.c.id
                )
            )
        ]


def check_cursors(store: Store, google: GoogleSandbox) -> None:
    """Every message a stored cursor says was read is stored (a cursor never runs ahead).

    A history cursor at H: every message added at or before H is stored. A listing cursor
    resuming before message key K (Gmail lists newest first): every message listed before it,
    i.e. at K or newer, is stored.
    """
    stored = _stored(store)
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(accounts.c.email, cursors.c.name, cursors.c.value).join(
                cursors, cursors.c.account_id == accounts.c.id
            )
        ).all()
    for email, name, value in rows:
        cursor = json.loads(value)
        mailbox = _mailbox(google, email)
        held = stored.get(email, set())
        assert int(cursor["history_id"]) <= mailbox.history_id, (email, name, cursor)
        if cursor["phase"] == "history":
            start = int(cursor["history_id"])
            missing = [
                m.id
                for m in mailbox.messages.values()
                if m.history_id <= start and SKIPPED.isdisjoint(m.label_ids) and m.id not in held
            ]
        elif cursor.get("page_token"):
            ms, seq, message_id = decode_token(cursor["page_token"], "m", 4)
            before = (ms, seq, message_id)
            missing = [
                m.id
                for m in mailbox.messages.values()
                if m.key >= before and SKIPPED.isdisjoint(m.label_ids) and m.id not in held
            ]
        else:
            missing = []
        assert not missing, f"{email} cursor {name} {cursor} runs ahead of {len(missing)} messages"


def check_invariants(store: Store, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> None:
    """Nothing lost, nothing duplicated, cursors consistent, outbox empty (see module doc)."""
    stored = _stored(store)
    for email, mailbox in google._mailboxes.items():
        present = {m.id for m in mailbox.messages.values() if SKIPPED.isdisjoint(m.label_ids)}
        lost = sorted(present - stored.get(email, set()))
        assert not lost, (
            f"{email}: {len(lost)} messages not stored: "
            + ", ".join(f"{m} (history {mailbox.messages[m].history_id})" for m in lost[:5])
            + f"; cursors: {_cursors(store)}; mailbox history {mailbox.history_id}"
        )
    check_cursors(store, google)
    with store.engine.connect() as conn:
        assert pending_count(conn) == 0, "the outbox is not empty"
        undecided = conn.execute(select(messages.c.id).where(messages.c.reason.is_(None))).all()
        assert not undecided, f"{len(undecided)} messages left undecided"
        wanted = {
            row.key: row
            for row in conn.execute(
                select(activities.c.key, activities.c.crm_id, activities.c.desired)
            )
        }
    in_crm = [a for a in pipedrive.activities() if not a.get("is_deleted")]
    keys = Counter(_key(a["note"]) for a in in_crm)
    duplicated = {k: n for k, n in keys.items() if n > 1}
    assert not duplicated, f"activities created twice: {duplicated}"
    assert set(keys) == set(wanted), (
        f"CRM and store disagree: {len(set(keys) - set(wanted))} extra in the CRM, "
        f"{len(set(wanted) - set(keys))} missing from it"
    )
    by_key = {_key(a["note"]): a for a in in_crm}
    for key, row in wanted.items():
        activity = by_key[key]
        assert str(activity["id"]) == row.crm_id, key
        desired = row.desired if isinstance(row.desired, dict) else json.loads(row.desired)
        links = {
            f"deal:{activity['deal_id']}" if activity.get("deal_id") else None,
            f"lead:{activity['lead_id']}" if activity.get("lead_id") else None,
            f"project:{activity['project_id']}" if activity.get("project_id") else None,
        } - {None}
        if len(desired["items"]) <= 1:
            assert links == set(desired["items"]), (key, links, desired["items"])
        else:  # the CRM keeps one link of an activity
            assert links <= set(desired["items"]), (key, links, desired["items"])


def _key(note: str) -> str:
    return note_lines(note)[-1].removeprefix("maillink-id: ")
