"""The store's operations for recording decisions and their CRM writes (the linker and the outbox
ask for them; no statement is built outside the store): on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from maillink.model import Address, Direction, Message
from maillink.store import Store, accounts, cache, mail
from maillink.store import outbox as outbox_rows
from maillink.store.activity_claims import ActivityClaim, OwnedElsewhere, claim_activities
from maillink.store.decisions import StoredDecision, messages_to_decide, record_decisions
from maillink.store.read_models import decision_history
from maillink.store.schema import messages

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
KEY = "m1@customer.example"


def _message(account: str, provider_id: str) -> Message:
    return Message(
        account=account,
        provider_id=provider_id,
        thread_key="t1",
        message_id=KEY,
        date=T0,
        direction=Direction.INBOUND,
        sender=Address("ann@customer.example", "Ann"),
        to=(Address(account),),
        subject="Renewal",
    )


def _stored(store: Store, email: str, provider_id: str) -> tuple[int, int]:
    """(account id, message row id) of one stored message."""
    with store.transaction() as conn:
        account = accounts.upsert(conn, email, "gmail", "x", "s")
        [tid] = mail.save_messages(conn, account.id, [_message(email, provider_id)], {})
        [row] = mail.thread_messages(conn, tid)
    return account.id, row["id"]


def _draft(items: list[str]) -> dict[str, Any]:
    return {"key": KEY, "subject": "Renewal", "person_ids": [1], "items": items}


def test_the_first_stored_copy_of_an_email_owns_its_activity(store: Store) -> None:
    first_account, first = _stored(store, "rep@acme.example", "p1")
    _, second = _stored(store, "other@acme.example", "q1")

    with store.transaction() as conn:
        owned = claim_activities(conn, [ActivityClaim(first, KEY, _draft(["deal:12"]))], T0)
        other = claim_activities(conn, [ActivityClaim(second, KEY, _draft(["deal:12"]))], T0)
        nothing = claim_activities(conn, [ActivityClaim(second, "other-key", None)], T0)

    assert owned == [None] and nothing == [None]
    assert other == [OwnedElsewhere(KEY, first_account, "p1")]
    with store.engine.connect() as conn:
        due = outbox_rows.due_activities(conn, 10, T0)
    assert [(r["key"], r["owner_message_id"], r["desired_version"]) for r in due] == []
    with store.transaction() as conn:  # due once the owner's message is decided
        record_decisions(conn, [(first, StoredDecision("single_open_item"))], "sync", T0)
        due = outbox_rows.due_activities(conn, 10, T0)
    assert [(r["key"], r["owner_message_id"], r["desired_version"]) for r in due] == [
        (KEY, first, 1)
    ]


def test_a_changed_activity_gets_a_new_version_and_an_unchanged_one_keeps_it(
    store: Store,
) -> None:
    _, row_id = _stored(store, "rep@acme.example", "p1")
    for items in (["deal:12"], ["deal:12"], []):
        with store.transaction() as conn:
            claim_activities(conn, [ActivityClaim(row_id, KEY, _draft(items))], T0)
    with store.transaction() as conn:
        versions = outbox_rows.versions(conn, KEY)
    assert versions is not None and versions.desired_version == 2


def test_only_one_of_two_processes_claims_the_same_create(store: Store) -> None:
    _, row_id = _stored(store, "rep@acme.example", "p1")
    with store.transaction() as conn:
        claim_activities(conn, [ActivityClaim(row_id, KEY, _draft([]))], T0)
        record_decisions(conn, [(row_id, StoredDecision("no_open_items"))], "sync", T0)
        [row] = outbox_rows.due_activities(conn, 10, T0)

    with store.transaction() as conn:
        first = outbox_rows.claim_creates(conn, [row], T0)
    with store.transaction() as conn:  # the same row as read before the first claim
        second = outbox_rows.claim_creates(conn, [row], T0)

    assert (first, second) == ({KEY}, set())
    with store.transaction() as conn:
        outbox_rows.mark_delivered(conn, [(row, "77")], T0)
        assert outbox_rows.delivery_state(conn, KEY) == {
            "state": "delivered",
            "activity": "77",
            "attempts": 1,
            "failed_at": None,
            "crm_answer": None,
        }


def test_a_transient_failure_makes_the_write_due_again_after_its_backoff(store: Store) -> None:
    account_id, row_id = _stored(store, "rep@acme.example", "p1")
    with store.transaction() as conn:
        claim_activities(conn, [ActivityClaim(row_id, KEY, _draft([]))], T0)
        record_decisions(conn, [(row_id, StoredDecision("no_open_items"))], "sync", T0)
        outbox_rows.retry_later(conn, KEY, 1, "503", T0 + timedelta(minutes=5))
        assert outbox_rows.due_activities(conn, 10, T0) == []
        assert len(outbox_rows.due_activities(conn, 10, T0 + timedelta(minutes=5))) == 1
        assert outbox_rows.left_for_later(conn, account_id) == (1, 0)


def test_recorded_decisions_are_the_messages_current_ones_with_their_history(
    store: Store,
) -> None:
    account_id, row_id = _stored(store, "rep@acme.example", "p1")
    decided = StoredDecision("single_open_item", (1,), ("deal:12",), (), "one open deal")
    with store.transaction() as conn:
        assert outbox_rows.left_for_later(conn, account_id) == (0, 1)
        record_decisions(conn, [(row_id, decided)], "sync", T0)
        threads = mail.threads_by_id(conn, [1])
        [stored] = messages_to_decide(conn, "rep@acme.example", threads)[1]
        [entry] = decision_history(conn, [row_id])[row_id]
        assert outbox_rows.left_for_later(conn, account_id) == (0, 0)

    assert stored.decision == decided
    assert stored.message == _message("rep@acme.example", "p1")
    assert (entry.reason, entry.cause, entry.items) == ("single_open_item", "sync", ["deal:12"])


def test_a_message_read_again_is_reused_unless_its_row_changed(store: Store) -> None:
    _, row_id = _stored(store, "rep@acme.example", "p1")
    with store.transaction() as conn:
        threads = mail.threads_by_id(conn, [1])
        [first] = messages_to_decide(conn, "rep@acme.example", threads)[1]
        built = {first.id: first}
        [same] = messages_to_decide(conn, "rep@acme.example", threads, built)[1]
        conn.execute(update(messages).where(messages.c.id == row_id).values(in_reply_to="x@y"))
        [changed] = messages_to_decide(conn, "rep@acme.example", threads, built)[1]

    assert same.message is first.message
    assert changed.message is not first.message and changed.message.in_reply_to == "x@y"


def test_a_state_value_is_replaced_only_while_it_is_what_the_caller_read(store: Store) -> None:
    with store.transaction() as conn:
        cache.add_state(conn, "since", "a")
        assert cache.replace_state(conn, "since", "a", "b")
        assert not cache.replace_state(conn, "since", "a", "c")
        assert cache.get_state(conn, "since") == "b"
