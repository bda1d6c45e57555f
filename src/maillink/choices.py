"""The user's word on a thread (rule 5): choose an item, or unlink; the same code for CLI and web."""

from __future__ import annotations

from collections import Counter
from typing import Any

from maillink.errors import ConfigError
from maillink.linking.facts import ItemRef
from maillink.store import accounts, mail


def _apply(app: Any, thread_id: int, choice: ItemRef | None, unlinked: bool) -> Counter[str]:
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


def choose_item(app: Any, thread_id: int, item: ItemRef) -> str:
    """Link the thread to `item`: its messages exchanged while the item was open follow it."""
    reasons = _apply(app, thread_id, item, unlinked=False)
    linked = reasons.get("user_choice", 0)
    others = sum(reasons.values()) - linked
    text = f"thread {thread_id} linked to {item}: {linked} message(s) linked"
    if others:
        rest = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()) if k != "user_choice")
        text += f"; {others} not ({rest})"
    return text


def unlink_thread(app: Any, thread_id: int) -> str:
    reasons = _apply(app, thread_id, None, unlinked=True)
    return f"thread {thread_id} unlinked: {sum(reasons.values())} message(s) now linked to persons only"
