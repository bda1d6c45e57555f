"""Rows that two mailboxes' rounds both write (the outbox row of an email that reached both, the
cached person they both mail) are written so that a concurrent writer cannot fail the round:
two transactions writing the same keys at the same moment both commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from maillink.crm.base import Changes
from maillink.linking.facts import LinkingPolicy, Reason
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.model import Address, Direction, Item, ItemKind, ItemRef, Message, Person
from maillink.store import Store, accounts, cache, mail
from maillink.store.accounts import Account
from maillink.store.schema import activities, messages, person_cache

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CUSTOMER = "ann@customer.example"
REPS = ("rep1@acme.example", "rep2@acme.example")


class _OnePersonCRM:
    """Narrow stand-in: Ann is person 7, with no items (or `items`); nothing is written."""

    def __init__(self, items: tuple[Item, ...] = ()) -> None:
        self.items = list(items)

    def search_persons(self, email: str) -> list[Person]:
        return [Person(7, "Ann", (CUSTOMER,))] if email == CUSTOMER else []

    def items_of_person(self, person_id: int) -> list[Item]:
        return list(self.items)

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        return []

    def changes_since(self, since: datetime) -> Changes:
        return Changes(frozenset(), frozenset(), since)


def _email_to_both(mailbox: str) -> Message:
    """The same email (one Message-ID) as each rep's mailbox holds it."""
    return Message(
        account=mailbox,
        provider_id=f"{mailbox}-1",
        thread_key=f"{mailbox}-t1",
        message_id="<shared-1@customer.example>",
        date=T0,
        direction=Direction.INBOUND,
        sender=Address(CUSTOMER, "Ann"),
        to=tuple(Address(r) for r in REPS),
        subject="Quote",
    )


def _stored(store: Store) -> list[tuple[Account, set[int]]]:
    stored = []
    with store.transaction() as conn:
        for rep in REPS:
            account = accounts.upsert(conn, rep, "gmail", "encrypted", "scope")
            touched = mail.save_messages(conn, account.id, [_email_to_both(rep)], {})
            stored.append((account, touched))
    return stored


def _waiting_on_a_lock(store: Store) -> bool:
    """True once another session of this database waits for a row lock (PostgreSQL)."""
    with store.engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def _interleaved(
    store: Store, first: Callable[[Connection], Any], second: Callable[[Connection], Any]
) -> list[Any]:
    """Run `first` in an open transaction, then `second` in another one (a thread) that writes
    the same keys before the first commits; both must commit. Returns their results."""
    results: list[Any] = [None, None]
    errors: list[BaseException] = []
    with store.engine.connect() as one:
        tx = one.begin()
        results[0] = first(one)

        def run_second() -> None:
            try:
                with store.transaction() as two:
                    results[1] = second(two)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        worker = threading.Thread(target=run_second)
        worker.start()
        if store.engine.dialect.name == "postgresql":
            # The second writer must be blocked on the first's uncommitted row before it commits.
            deadline = time.monotonic() + 20
            while not _waiting_on_a_lock(store) and worker.is_alive():
                assert time.monotonic() < deadline, "the second writer never reached the row"
                time.sleep(0.01)
        tx.commit()
    worker.join(30)
    assert not worker.is_alive()
    assert errors == [], errors
    return results


@pytest.fixture
def linker(store: Store) -> Iterator[Linker]:
    facts = FactGatherer(store, _OnePersonCRM(), CacheTTL())  # type: ignore[arg-type]
    yield Linker(store, facts, LinkingPolicy(own_addresses=frozenset(REPS)))


def test_two_mailboxes_recording_the_same_email_at_once_both_commit_and_make_one_activity(
    store: Store, linker: Linker
) -> None:
    (rep1, threads1), (rep2, threads2) = _stored(store)

    reasons = _interleaved(
        store,
        lambda conn: linker.decide(rep1, threads1, conn=conn),
        lambda conn: linker.decide(rep2, threads2, conn=conn),
    )

    with store.engine.connect() as conn:
        outbox = conn.execute(select(activities.c.key, activities.c.owner_message_id)).all()
        decided = dict(conn.execute(select(messages.c.account_id, messages.c.reason)).all())
        owner = conn.execute(
            select(messages.c.id).where(messages.c.account_id == rep1.id)
        ).scalar_one()
    assert outbox == [("<shared-1@customer.example>", owner)]  # one activity, the first's
    assert reasons[0][Reason.NO_OPEN_ITEMS.value] == 1
    assert reasons[1] == {Reason.DUPLICATE_MESSAGE.value: 1}
    assert decided == {rep1.id: Reason.NO_OPEN_ITEMS.value, rep2.id: Reason.DUPLICATE_MESSAGE.value}


def test_the_email_whose_owner_left_is_claimed_by_one_of_two_mailboxes_deciding_at_once(
    store: Store, linker: Linker
) -> None:
    (rep1, threads1), (rep2, threads2) = _stored(store)
    third = "rep3@acme.example"
    with store.transaction() as conn:
        gone = accounts.upsert(conn, third, "gmail", "encrypted", "scope")
        touched = mail.save_messages(conn, gone.id, [_email_to_both(third)], {})
    # It was decided when Ann had a deal: its activity names it, the others' would not.
    deal = Item(ItemRef(ItemKind.DEAL, "3"), "Deal", frozenset({7}), T0 - timedelta(days=9))
    facts = FactGatherer(store, _OnePersonCRM((deal,)), CacheTTL())  # type: ignore[arg-type]
    Linker(store, facts, linker.policy).decide(gone, touched)
    with store.transaction() as conn:
        accounts.remove(conn, gone.id)  # its message goes: the activity has no owner now
        cache.forget_all(conn)  # and the deal is gone since

    reasons = _interleaved(
        store,
        lambda conn: linker.decide(rep1, threads1, conn=conn),
        lambda conn: linker.decide(rep2, threads2, conn=conn),
    )

    with store.engine.connect() as conn:
        ((owner, version),) = conn.execute(
            select(activities.c.owner_message_id, activities.c.desired_version)
        ).all()
        decided = dict(conn.execute(select(messages.c.account_id, messages.c.reason)).all())
    assert owner is not None and version == 2  # taken over once, by one of them
    assert sorted(decided.values()) == [Reason.DUPLICATE_MESSAGE.value, Reason.NO_OPEN_ITEMS.value]
    assert sum(r.get(Reason.DUPLICATE_MESSAGE.value, 0) for r in reasons) == 1


def test_two_rounds_caching_the_same_person_at_once_both_commit(store: Store) -> None:
    ann = {CUSTOMER: [Person(7, "Ann", (CUSTOMER,))]}
    later = T0 + timedelta(minutes=1)
    _interleaved(
        store,
        lambda conn: cache.put_persons(conn, ann, T0),
        lambda conn: cache.put_persons(conn, ann, later),
    )
    with store.engine.connect() as conn:
        cached = conn.execute(select(person_cache.c.email, person_cache.c.fetched_at)).all()
    assert cached == [(CUSTOMER, later)]


def test_the_same_mailbox_connected_twice_at_once_is_one_account_with_the_last_token(
    store: Store,
) -> None:
    _interleaved(
        store,
        lambda conn: accounts.upsert(conn, "rep9@acme.example", "gmail", "first", "scope"),
        lambda conn: accounts.upsert(conn, "rep9@acme.example", "gmail", "second", "scope"),
    )
    with store.engine.connect() as conn:
        [account] = accounts.all_accounts(conn)
    assert (account.email, account.token) == ("rep9@acme.example", "second")
