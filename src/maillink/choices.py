"""The user's word on a thread (rule 5): choose an item, or unlink; the same code for CLI and web.

A chosen item must be well formed (deals and projects have integer ids, leads UUIDs) and be an
item, in the CRM, of one of the thread's persons: a rep cannot link a thread to, or learn the title
of, an item that has nothing to do with it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

from maillink.errors import ConfigError
from maillink.linking.rules import external_participants
from maillink.model import Item, ItemKind, ItemRef, ItemStatus
from maillink.store import accounts, mail
from maillink.store.decisions import messages_to_decide

if TYPE_CHECKING:
    from maillink.app import App

_INTEGER_ID = re.compile(r"[1-9][0-9]{0,17}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ID_FORMATS = {
    ItemKind.DEAL: (_INTEGER_ID, "a deal's id is a whole number, e.g. deal:12"),
    ItemKind.PROJECT: (_INTEGER_ID, "a project's id is a whole number, e.g. project:3"),
    ItemKind.LEAD: (_UUID, "a lead's id is a UUID, e.g. lead:5d1c3a9e-0b7f-4c2e-9a51-3f0c8d2e6b14"),
}
# HubSpot names every record, leads too, by a whole number.
HUBSPOT_ID_FORMATS = {
    **ID_FORMATS,
    ItemKind.LEAD: (_INTEGER_ID, "a lead's id is a whole number, e.g. lead:12"),
}


def well_formed(item: ItemRef, crm: str = "pipedrive") -> ItemRef:
    """`item` with its id in canonical form; ValueError when the id cannot be one of its kind
    in `crm` (the `[crm] kind`)."""
    pattern, example = (HUBSPOT_ID_FORMATS if crm == "hubspot" else ID_FORMATS)[item.kind]
    ident = item.id.strip().lower() if item.kind is ItemKind.LEAD else item.id.strip()
    if not pattern.fullmatch(ident):
        raise ValueError(f"{str(item)[:80]!r} is not an item: {example}")
    return ItemRef(item.kind, ident)


def parse_item(text: str, crm: str = "pipedrive") -> ItemRef:
    """`deal:ID`, `lead:ID` or `project:ID`, well formed; ValueError with what to write."""
    return well_formed(ItemRef.parse(text), crm)


def thread_person_items(app: App, thread_id: int, *, fresh: bool = False) -> dict[ItemRef, Item]:
    """The items of the thread's persons (the CRM persons of its external participants), from the
    caches, or, with `fresh`, read again from the CRM. Deleted items are left out."""
    with app.store.engine.connect() as conn:
        thread = mail.get_thread(conn, thread_id)
        if thread is None:
            raise ConfigError(f"no thread {thread_id} (see: maillink pending)")
        account = accounts.get_by_id(conn, thread.account_id)
        assert account is not None
        stored = messages_to_decide(conn, account.email, {thread_id: thread})[thread_id]
    policy = app.policy()
    emails: set[str] = set()
    for m in stored:
        external, _blocked = external_participants(m.message, policy)
        emails.update(a.email for a in external)
    facts = app.facts.gather(emails)
    person_ids = {p.id for found in facts.persons_by_email.values() for p in found}
    found: dict[ItemRef, Item] = {}
    for person_id in sorted(person_ids):
        items = (
            app.crm.items_of_person(person_id) if fresh else facts.items_by_person.get(person_id)
        )
        for item in items or ():
            if item.status is not ItemStatus.DELETED:
                found.setdefault(item.ref, item)
    return found


def check_choice(app: App, thread_id: int, item: ItemRef) -> ItemRef:
    """`item`, canonical, if it may be chosen for the thread; ConfigError saying why not."""
    try:
        item = well_formed(item, app.settings.crm.kind)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if item in thread_person_items(app, thread_id):
        return item
    if item in thread_person_items(app, thread_id, fresh=True):  # created since the cache read
        return item
    raise ConfigError(
        f"{item} is not a deal, lead or project of this thread's persons: choose one of theirs "
        "(maillink explain THREAD_ID shows them)"
    )


def _apply(app: App, thread_id: int, choice: ItemRef | None, unlinked: bool) -> Counter[str]:
    with app.store.transaction() as conn:
        thread = mail.get_thread(conn, thread_id)
        if thread is None:
            raise ConfigError(f"no thread {thread_id} (see: maillink pending)")
        account = accounts.get_by_id(conn, thread.account_id)
        mail.set_choice(conn, thread_id, choice, unlinked)
    assert account is not None
    reasons = app.linker().decide(account, [thread_id], cause="choice")
    app.outbox.deliver()
    return reasons


def choose_item(app: App, thread_id: int, item: ItemRef) -> str:
    """Link the thread to `item`: its messages exchanged while the item was open follow it.

    ConfigError when `item` is not one of the thread's persons' items (see `check_choice`)."""
    item = check_choice(app, thread_id, item)
    reasons = _apply(app, thread_id, item, unlinked=False)
    linked = reasons.get("user_choice", 0)
    others = sum(reasons.values()) - linked
    text = f"thread {thread_id} linked to {item}: {linked} message(s) linked"
    if others:
        rest = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()) if k != "user_choice")
        text += f"; {others} not ({rest})"
    return text


def unlink_thread(app: App, thread_id: int) -> str:
    reasons = _apply(app, thread_id, None, unlinked=True)
    return f"thread {thread_id} unlinked: {sum(reasons.values())} message(s) now linked to persons only"
