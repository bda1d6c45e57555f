"""The outbox with a CRM that creates many activities a request (HubSpot), on a real SQLite store
and the HubSpot sandbox over real HTTP: the claimed rows go in one batch, and every row keeps
its own outcome (docs/crm-writes.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from maillink.crm.hubspot import HubSpotCRM
from maillink.linking.facts import LinkingPolicy
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.model import Address, Direction, Message
from maillink.outbox import Outbox, failed_count, pending_count
from maillink.sandbox._server import Fault
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.store import Store, accounts, mail
from maillink.store.outbox import delivery_state, failed_deliveries

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
REP = "rep@acme.example"
POLICY = LinkingPolicy(own_addresses=frozenset({REP}))
CREATE = r"^/crm/v3/objects/emails/batch/create$"
READ = r"^/crm/v3/objects/emails/batch/read$"


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(days=10)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox() as running:
        yield running


@pytest.fixture
def sandbox(server: HubSpotSandbox) -> HubSpotSandbox:
    server.reset()
    return server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def crm(sandbox: HubSpotSandbox) -> HubSpotCRM:
    return HubSpotCRM(
        sandbox.url, access_token=sandbox.access_token, max_retries=0, sleep=lambda _: None
    )


def queue(store: Store, crm: HubSpotCRM, sandbox: HubSpotSandbox, count: int) -> list[str]:
    """`count` emails from one customer with an open deal, each its own thread, decided (their
    writes queued); their keys, oldest first."""
    ann = sandbox.add_contact("ann@customer.example", "Ann", "Lee")
    sandbox.add_deal("Renewal", ann, add_time=T0 - timedelta(days=30))
    found = [
        Message(
            account=REP,
            provider_id=f"p{n}",
            thread_key=f"t{n}",
            message_id=f"m{n}@customer.example",
            date=T0 + timedelta(minutes=n),
            direction=Direction.INBOUND,
            sender=Address("ann@customer.example", "Ann Lee"),
            to=(Address(REP),),
            subject=f"Renewal {n}",
        )
        for n in range(count)
    ]
    with store.transaction() as conn:
        account = accounts.upsert(conn, REP, "gmail", "x", "s")
        touched = mail.save_messages(conn, account.id, found, {})
    Linker(store, FactGatherer(store, crm, CacheTTL()), POLICY).decide(account, touched)
    return [m.key for m in found]


def creates(sandbox: HubSpotSandbox) -> int:
    return sum(1 for r in sandbox.received if r.path == "/crm/v3/objects/emails/batch/create")


def state(store: Store, key: str) -> dict[str, object]:
    with store.engine.connect() as conn:
        found = delivery_state(conn, key)
    assert found is not None
    return found


def test_the_claimed_writes_go_to_hubspot_a_hundred_a_request(
    sqlite_store: Store, crm: HubSpotCRM, sandbox: HubSpotSandbox, clock: Clock
) -> None:
    keys = queue(sqlite_store, crm, sandbox, 120)
    sandbox.received.clear()

    first = Outbox(sqlite_store, crm, clock=clock).deliver()
    again = Outbox(sqlite_store, crm, clock=clock).deliver()

    assert (first.created, first.failed, again.created) == (120, 0, 0)
    assert creates(sandbox) == 2  # 100 + 20, where one request a write would make 120
    stored = {e["properties"]["maillink_key"]: str(e["id"]) for e in sandbox.emails()}
    assert sorted(stored) == sorted(keys)
    assert {state(sqlite_store, k)["state"] for k in keys} == {"delivered"}
    assert {k: state(sqlite_store, k)["activity"] for k in keys} == stored
    with sqlite_store.engine.connect() as conn:
        assert pending_count(conn) == 0


def test_a_partial_answer_parks_only_the_refused_write(
    sqlite_store: Store, crm: HubSpotCRM, sandbox: HubSpotSandbox, clock: Clock
) -> None:
    keys = queue(sqlite_store, crm, sandbox, 4)
    refused = keys[2]
    answer = {
        "status": "COMPLETE",
        "results": [
            {"id": str(9001 + n), "properties": {"maillink_key": k}, "archived": False}
            for n, k in enumerate(keys)
            if k != refused
        ],
        "numErrors": 1,
        "errors": [
            {
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": "Property values were not valid: hs_email_subject",
                "context": {"maillink_key": [refused]},
            }
        ],
        "startedAt": "2026-03-11T09:00:00.000Z",
        "completedAt": "2026-03-11T09:00:00.100Z",
    }
    sandbox.faults.add(Fault(path=CREATE, status=207, body=json.dumps(answer)))

    delivery = Outbox(sqlite_store, crm, clock=clock).deliver()

    assert (delivery.created, delivery.refused, delivery.failed) == (3, 1, 0)
    assert [state(sqlite_store, k)["state"] for k in keys] == [
        "delivered",
        "delivered",
        "failed",
        "delivered",
    ]
    assert state(sqlite_store, keys[3])["activity"] == "9004"  # by key, not by position
    with sqlite_store.engine.connect() as conn:
        [parked] = failed_deliveries(conn)
        assert failed_count(conn) == 1
    assert parked["key"] == refused
    assert "Property values were not valid" in str(parked["crm_answer"])


def test_an_unknown_outcome_batch_is_found_again_by_key_without_duplicates(
    sqlite_store: Store, crm: HubSpotCRM, sandbox: HubSpotSandbox, clock: Clock
) -> None:
    keys = queue(sqlite_store, crm, sandbox, 5)
    sandbox.lose_next_response(CREATE)  # carried out, answer lost
    sandbox.inject_server_error(READ)  # and the look-up right after fails too

    lost = Outbox(sqlite_store, crm, clock=clock).deliver()
    assert (lost.created, lost.failed) == (0, 5)
    assert {state(sqlite_store, k)["state"] for k in keys} == {"retrying"}

    clock.now += timedelta(hours=1)  # past the backoff
    found = Outbox(sqlite_store, crm, clock=clock).deliver()

    assert (found.found_again, found.created, found.failed) == (5, 0, 0)
    assert sorted(e["properties"]["maillink_key"] for e in sandbox.emails()) == sorted(keys)
    assert {state(sqlite_store, k)["state"] for k in keys} == {"delivered"}


def test_a_lost_batch_answer_found_at_once_needs_no_second_delivery(
    sqlite_store: Store, crm: HubSpotCRM, sandbox: HubSpotSandbox, clock: Clock
) -> None:
    keys = queue(sqlite_store, crm, sandbox, 5)
    sandbox.lose_next_response(CREATE)

    delivery = Outbox(sqlite_store, crm, clock=clock).deliver()

    assert (delivery.created, delivery.failed) == (5, 0)
    assert creates(sandbox) == 1 and len(sandbox.emails()) == 5
    assert {state(sqlite_store, k)["state"] for k in keys} == {"delivered"}
