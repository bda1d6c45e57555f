"""The linker alone, on a real SQLite store and an in-process CRM: it decides the threads a page
touched and asks the store to record each decision, its history and one outbox row per email."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.fake_crm import FakeCRM

from maillink.linking.facts import LinkingPolicy, Reason
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.model import Address, Direction, Item, ItemKind, ItemRef, Message, Person
from maillink.store import Store, accounts, mail
from maillink.store.accounts import Account
from maillink.store.schema import activities, decision_log, messages

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
REP = "rep@acme.example"
OTHER_REP = "other@acme.example"
ANN = Person(1, "Ann", ("ann@customer.example",))
DEAL = Item(ItemRef(ItemKind.DEAL, "12"), "Renewal", frozenset({1}), T0 - timedelta(days=30))
POLICY = LinkingPolicy(
    own_addresses=frozenset({REP, OTHER_REP}), internal_domains=frozenset({"acme.example"})
)


def _message(n: int, *, account: str = REP, thread: str = "t1", days: int = 0) -> Message:
    return Message(
        account=account,
        provider_id=f"{account}-p{n}",
        thread_key=thread,
        message_id=f"m{n}@customer.example",
        date=T0 + timedelta(days=days),
        direction=Direction.INBOUND,
        sender=Address("ann@customer.example", "Ann"),
        to=(Address(account),),
        subject="Renewal",
    )


@pytest.fixture
def crm() -> FakeCRM:
    fake = FakeCRM()
    fake.add_person(ANN, DEAL)
    return fake


def _linker(store: Store, crm: FakeCRM) -> Linker:
    return Linker(store, FactGatherer(store, crm, CacheTTL()), POLICY)


def _stored(store: Store, email: str, *batch: Message) -> tuple[Account, set[int]]:
    with store.transaction() as conn:
        account = accounts.get(conn, email) or accounts.upsert(conn, email, "gmail", "x", "s")
        return account, mail.save_messages(conn, account.id, list(batch), {})


def _rows(store: Store, table: Any, *columns: Any) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(*columns).order_by(*columns)))


def _count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_the_linker_records_a_decision_and_one_outbox_row_per_email(
    sqlite_store: Store, crm: FakeCRM
) -> None:
    account, touched = _stored(sqlite_store, REP, _message(1), _message(2, days=1))

    reasons = _linker(sqlite_store, crm).decide(account, touched)

    assert reasons == {Reason.SINGLE_OPEN_ITEM.value: 1, Reason.LINKED_THREAD_ITEM.value: 1}
    decided = _rows(sqlite_store, messages, messages.c.provider_id, messages.c.reason)
    assert [tuple(r) for r in decided] == [
        (f"{REP}-p1", "single_open_item"),
        (f"{REP}-p2", "linked_thread_item"),
    ]
    assert _count(sqlite_store, decision_log) == 2
    outbox = _rows(sqlite_store, activities, activities.c.key, activities.c.desired)
    assert [r.key for r in outbox] == ["m1@customer.example", "m2@customer.example"]
    assert all(r.desired["items"] == ["deal:12"] for r in outbox)
    assert all(r.desired["person_ids"] == [ANN.id] for r in outbox)


def test_deciding_a_thread_again_unchanged_records_nothing_new(
    sqlite_store: Store, crm: FakeCRM
) -> None:
    account, touched = _stored(sqlite_store, REP, _message(1))
    linker = _linker(sqlite_store, crm)
    linker.decide(account, touched)

    assert linker.decide(account, touched) == {Reason.SINGLE_OPEN_ITEM.value: 1}

    assert _count(sqlite_store, decision_log) == 1
    versions = _rows(sqlite_store, activities, activities.c.desired_version)
    assert [v for (v,) in versions] == [1]


def test_a_changed_decision_is_logged_and_its_outbox_row_gets_a_new_version(
    sqlite_store: Store, crm: FakeCRM
) -> None:
    account, touched = _stored(sqlite_store, REP, _message(1))
    linker = _linker(sqlite_store, crm)
    linker.decide(account, touched)
    with sqlite_store.transaction() as conn:  # the rep unlinks the thread (rule 5)
        mail.set_choice(conn, next(iter(touched)), None, unlinked=True)

    linker.decide(account, touched, cause="choice")

    log = _rows(sqlite_store, decision_log, decision_log.c.id, decision_log.c.cause)
    assert [cause for _id, cause in log] == ["sync", "choice"]
    [(version, desired)] = _rows(
        sqlite_store, activities, activities.c.desired_version, activities.c.desired
    )
    assert (version, desired["items"]) == (2, [])


def test_the_same_email_in_a_second_mailbox_writes_no_second_activity(
    sqlite_store: Store, crm: FakeCRM
) -> None:
    first, first_threads = _stored(sqlite_store, REP, _message(1))
    second, second_threads = _stored(sqlite_store, OTHER_REP, _message(1, account=OTHER_REP))
    linker = _linker(sqlite_store, crm)

    linker.decide(first, first_threads)
    reasons = linker.decide(second, second_threads)

    assert reasons == {Reason.DUPLICATE_MESSAGE.value: 1}
    assert _count(sqlite_store, activities) == 1
    details = dict(_rows(sqlite_store, messages, messages.c.provider_id, messages.c.detail))
    assert details[f"{OTHER_REP}-p1"] == (
        f"the same email (m1@customer.example) was stored first as message {REP}-p1 of "
        f"account {first.id}, whose decision writes its one activity"
    )


def test_a_dry_run_decides_in_the_given_connection_and_leaves_nothing(
    sqlite_store: Store, crm: FakeCRM
) -> None:
    account, touched = _stored(sqlite_store, REP, _message(1))

    with sqlite_store.rolled_back() as conn:
        reasons = _linker(sqlite_store, crm).decide(account, touched, conn=conn)

    assert reasons == {Reason.SINGLE_OPEN_ITEM.value: 1}
    assert _count(sqlite_store, activities) == _count(sqlite_store, decision_log) == 0


def test_each_message_is_built_from_its_row_once_per_decision(
    sqlite_store: Store, crm: FakeCRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the threads before the CRM facts and again in the write transaction reuses the
    messages built the first time (it used to build each one three times or more)."""
    account, touched = _stored(
        sqlite_store, REP, _message(1), _message(2, days=1), _message(3, days=2)
    )
    built: list[str] = []
    original: Callable[..., Message] = mail.message_from_row

    def counting(account_email: str, thread_key: str, row: Any) -> Message:
        built.append(row["provider_id"])
        return original(account_email, thread_key, row)

    monkeypatch.setattr(mail, "message_from_row", counting)

    _linker(sqlite_store, crm).decide(account, touched)

    assert sorted(built) == [f"{REP}-p1", f"{REP}-p2", f"{REP}-p3"]
