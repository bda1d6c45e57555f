"""The outbox alone, on a real SQLite store and an in-process CRM: what it does with each answer
the CRM gives (docs/crm-writes.md). The linker queues the writes, as in a round."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tests.fake_crm import FakeCRM

from maillink.crm.base import CRMAuthError, CRMRateLimited, CRMRefused, CRMUnavailable
from maillink.linking.facts import LinkingPolicy
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.model import Address, Direction, Item, ItemKind, ItemRef, Message, Person
from maillink.outbox import Outbox, failed_count, pending_count
from maillink.store import Store, accounts, mail
from maillink.store.outbox import delivery_state, failed_deliveries

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
REP = "rep@acme.example"
ANN = Person(1, "Ann", ("ann@customer.example",))
DEAL = Item(ItemRef(ItemKind.DEAL, "12"), "Renewal", frozenset({1}), T0 - timedelta(days=30))
POLICY = LinkingPolicy(own_addresses=frozenset({REP}))
KEY = "m1@customer.example"


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(days=1)

    def __call__(self) -> datetime:
        return self.now

    def later(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def crm() -> FakeCRM:
    fake = FakeCRM()
    fake.add_person(ANN, DEAL)
    return fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=[1, 4], ids=["one_worker", "four_workers"])
def outbox(
    request: pytest.FixtureRequest, sqlite_store: Store, crm: FakeCRM, clock: Clock
) -> Outbox:
    """An outbox holding one queued write: the activity of one email linked to deal 12."""
    message = Message(
        account=REP,
        provider_id="p1",
        thread_key="t1",
        message_id=KEY,
        date=T0,
        direction=Direction.INBOUND,
        sender=Address("ann@customer.example", "Ann"),
        to=(Address(REP),),
        subject="Renewal",
    )
    with sqlite_store.transaction() as conn:
        account = accounts.upsert(conn, REP, "gmail", "x", "s")
        touched = mail.save_messages(conn, account.id, [message], {})
    Linker(sqlite_store, FactGatherer(sqlite_store, crm, CacheTTL()), POLICY).decide(
        account, touched
    )
    return Outbox(sqlite_store, crm, clock=clock, workers=request.param)


def _state(store: Store) -> dict[str, object]:
    with store.engine.connect() as conn:
        state = delivery_state(conn, KEY)
    assert state is not None
    return state


def test_the_outbox_creates_the_activity_once_and_records_its_crm_id(
    outbox: Outbox, crm: FakeCRM, sqlite_store: Store
) -> None:
    first = outbox.deliver()
    again = outbox.deliver()

    assert (first.created, again.created) == (1, 0)
    assert crm.count("create_activity") == 1
    [(activity_id, draft)] = crm.activities.items()
    assert draft.items == (DEAL.ref,) and draft.person_ids == (ANN.id,)
    assert _state(sqlite_store)["state"] == "delivered"
    assert _state(sqlite_store)["activity"] == activity_id
    with sqlite_store.engine.connect() as conn:
        assert pending_count(conn) == 0


def test_an_unknown_outcome_is_looked_up_by_maillink_id_before_a_create(
    outbox: Outbox, crm: FakeCRM, clock: Clock, sqlite_store: Store
) -> None:
    crm.lose_next_create_answer()
    lost = outbox.deliver()
    assert (lost.created, lost.failed) == (0, 1)  # as far as maillink knows
    assert _state(sqlite_store)["state"] == "retrying"

    clock.later(hours=1)  # past the backoff
    found = outbox.deliver()

    assert (found.found_again, found.created) == (1, 0)
    assert crm.count("find_activity") == 1
    assert crm.count("create_activity") == 1  # the activity exists once in the CRM
    assert _state(sqlite_store)["state"] == "delivered"


def test_a_transient_failure_waits_for_its_backoff(
    outbox: Outbox, crm: FakeCRM, clock: Clock
) -> None:
    crm.fail_next("create_activity", CRMUnavailable("503 from the CRM"))
    assert outbox.deliver().failed == 1

    assert outbox.deliver().created == 0  # not due yet: nothing is sent
    clock.later(hours=1)
    assert crm.count("find_activity") == 0
    assert outbox.deliver().created == 1


def test_a_write_refused_for_good_is_parked_with_the_crms_answer_until_retried(
    outbox: Outbox, crm: FakeCRM, clock: Clock, sqlite_store: Store
) -> None:
    crm.fail_next("create_activity", CRMRefused("400 from the CRM", 400, "subject is too long"))

    refused = outbox.deliver()
    clock.later(days=1)
    later = outbox.deliver()

    assert (refused.refused, later.created) == (1, 0)
    assert crm.count("create_activity") == 1  # not sent again by itself
    with sqlite_store.engine.connect() as conn:
        assert failed_count(conn) == 1
        [failed] = failed_deliveries(conn)
    assert failed["key"] == KEY and "400 from the CRM" in failed["crm_answer"]

    assert outbox.retry() == 1
    assert outbox.deliver().created == 1
    assert _state(sqlite_store)["state"] == "delivered"


def test_a_spent_daily_budget_parks_every_write_until_the_reset(
    outbox: Outbox, crm: FakeCRM, clock: Clock
) -> None:
    crm.fail_next("create_activity", CRMRateLimited("daily budget spent", 3600, daily=True))

    parked = outbox.deliver()

    assert parked.parked_until == clock.now + timedelta(hours=1)
    assert outbox.deliver().parked_until == parked.parked_until
    assert crm.count("create_activity") == 1
    clock.later(hours=2)
    assert outbox.deliver().created == 1


def test_a_changed_decision_updates_the_activity_it_created(
    outbox: Outbox, crm: FakeCRM, sqlite_store: Store
) -> None:
    outbox.deliver()
    with sqlite_store.transaction() as conn:
        account = accounts.get(conn, REP)
        mail.set_choice(conn, 1, None, unlinked=True)  # the rep unlinks the thread (rule 5)
    assert account is not None
    Linker(sqlite_store, FactGatherer(sqlite_store, crm, CacheTTL()), POLICY).decide(account, [1])

    updated = outbox.deliver()

    assert (updated.updated, updated.created) == (1, 0)
    [draft] = crm.activities.values()
    assert draft.items == ()


def _decided_emails(store: Store, crm: FakeCRM, count: int) -> None:
    """`count` emails from a known person, each its own thread, decided: `count` creates due."""
    emails = [
        Message(
            account=REP,
            provider_id=f"p{n}",
            thread_key=f"t{n}",
            message_id=f"m{n}@customer.example",
            date=T0,
            direction=Direction.INBOUND,
            sender=Address("ann@customer.example", "Ann"),
            to=(Address(REP),),
            subject="Renewal",
        )
        for n in range(count)
    ]
    with store.transaction() as conn:
        account = accounts.upsert(conn, REP, "gmail", "x", "s")
        touched = mail.save_messages(conn, account.id, emails, {})
    Linker(store, FactGatherer(store, crm, CacheTTL()), POLICY).decide(account, touched)


def _created_keys(crm: FakeCRM) -> list[str]:
    return sorted(draft.key for draft in crm.activities.values())


def test_writes_claimed_ahead_but_never_sent_are_created_without_a_look_up(
    sqlite_store: Store, crm: FakeCRM, clock: Clock
) -> None:
    """Creates are claimed a few at a time; a delivery that stops (a spent daily budget) gives
    back the claims of those it never sent, so only the refused one is looked up next time."""
    _decided_emails(sqlite_store, crm, 3)
    outbox = Outbox(sqlite_store, crm, clock=clock, workers=1)
    crm.fail_next("create_activity", CRMRateLimited("daily budget spent", 3600, daily=True))

    assert outbox.deliver().parked_until is not None
    clock.later(hours=2)
    after = outbox.deliver()

    assert (after.created, after.found_again) == (3, 0)
    assert crm.count("find_activity") == 1  # the refused create only
    assert crm.count("create_activity") == 4  # the refused one, then each email once
    with sqlite_store.engine.connect() as conn:
        assert pending_count(conn) == 0


def test_a_window_stopped_with_creates_in_flight_records_them_and_gives_back_the_rest(
    sqlite_store: Store, crm: FakeCRM, clock: Clock
) -> None:
    """Four creates in flight at once: when one says the daily budget is spent, the creates
    still in flight end and are recorded, the claims of those never sent are given back, so
    the next delivery looks up the refused one only and every email has one activity."""
    _decided_emails(sqlite_store, crm, 12)
    outbox = Outbox(sqlite_store, crm, clock=clock, workers=4)
    crm.fail_next("create_activity", CRMRateLimited("daily budget spent", 3600, daily=True))

    assert outbox.deliver().parked_until is not None
    clock.later(hours=2)
    outbox.deliver()

    keys = _created_keys(crm)
    assert len(keys) == len(set(keys)) == 12
    assert crm.count("find_activity") == 1  # the refused create only
    assert crm.count("create_activity") == 13
    with sqlite_store.engine.connect() as conn:
        assert pending_count(conn) == 0


def test_an_error_raised_in_a_worker_reaches_the_caller_and_the_other_creates_are_kept(
    sqlite_store: Store, crm: FakeCRM, clock: Clock
) -> None:
    """The CRM refusing the credentials in one of the workers stops the delivery with that
    error; the creates that went through meanwhile are recorded and never sent again."""
    _decided_emails(sqlite_store, crm, 12)
    outbox = Outbox(sqlite_store, crm, clock=clock, workers=4)
    crm.fail_next("create_activity", CRMAuthError("invalid API token"))

    with pytest.raises(CRMAuthError, match="invalid API token"):
        outbox.deliver()
    outbox.deliver()

    keys = _created_keys(crm)
    assert len(keys) == len(set(keys)) == 12
    assert crm.count("find_activity") == 1  # the create whose call raised
    with sqlite_store.engine.connect() as conn:
        assert pending_count(conn) == 0
