"""Who owns an email in Pipedrive, and the organization link: the owner rules (pure), the users
list and the activity's owner_id/org_id through the Pipedrive sandbox over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

import openapi_check
from maillink.crm.activity import draft_for, draft_from_json, draft_to_json
from maillink.crm.base import ActivityDraft, CRMRecordGone, CRMRefused, CRMUnavailable
from maillink.crm.owners import (
    BY_EMAIL,
    BY_HAND,
    Mailbox,
    Owners,
    match_user,
    ownerships,
    owning_mailbox,
)
from maillink.crm.pipedrive import TOKEN_COSTS, PipedriveCRM
from maillink.model import Address, CrmUser, Direction, Message
from maillink.sandbox._server import Fault
from maillink.sandbox.pipedrive import PipedriveSandbox

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
WHEN = datetime(2025, 5, 1, 14, 5, tzinfo=UTC)

ANN = Mailbox("ann@team.example", ("ann.sales@team.example",))
BOB = Mailbox("bob@team.example")
CAT = Mailbox("cat@team.example")
TEAM = (ANN, BOB, CAT)


def message(
    account: str,
    direction: Direction,
    sender: str,
    to: tuple[str, ...] = (),
    cc: tuple[str, ...] = (),
    bcc: tuple[str, ...] = (),
) -> Message:
    return Message(
        account=account,
        provider_id="p1",
        thread_key="t1",
        message_id="m1@example.com",
        date=WHEN,
        direction=direction,
        sender=Address(sender),
        to=tuple(Address(a) for a in to),
        cc=tuple(Address(a) for a in cc),
        bcc=tuple(Address(a) for a in bcc),
        subject="Quote",
    )


# -- whose mailbox the email belongs to (pure) -------------------------------------------------

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
# fmt: off
OWNER_CASES = [
    # (case, the mailbox it was synced from, direction, from, to, cc, bcc, owner)
    ("outbound: the sender", "ann@team.example", OUT, "ann@team.example", ("x@c.com",), (), (),
     "ann@team.example"),
    ("outbound from an alias: the alias's mailbox", "ann@team.example", OUT,
     "ann.sales@team.example", ("x@c.com",), (), (), "ann@team.example"),
    ("outbound from an unlisted alias: the mailbox that sent it, not a connected recipient",
     "ann@team.example", OUT, "a.n@team.example", ("bob@team.example",), (), (),
     "ann@team.example"),
    ("inbound: the first connected recipient in To", "bob@team.example", IN, "x@c.com",
     ("y@c.com", "bob@team.example"), (), (), "bob@team.example"),
    ("inbound to two reps: To order, the first of them", "cat@team.example", IN, "x@c.com",
     ("cat@team.example", "bob@team.example"), (), (), "cat@team.example"),
    ("inbound to two reps, the copy in the second one's mailbox: still the first",
     "bob@team.example", IN, "x@c.com", ("cat@team.example", "bob@team.example"), (), (),
     "cat@team.example"),
    ("inbound: To before Cc", "bob@team.example", IN, "x@c.com", ("y@c.com",),
     ("cat@team.example", "bob@team.example"), (), "cat@team.example"),
    ("inbound: a recipient alias", "ann@team.example", IN, "x@c.com",
     ("ann.sales@team.example",), (), (), "ann@team.example"),
    ("inbound, Bcc only: the mailbox it came from", "bob@team.example", IN, "x@c.com",
     ("y@c.com",), (), ("bob@team.example",), "bob@team.example"),
    ("rep to rep and a customer, the receiving rep's copy: the sending rep",
     "bob@team.example", IN, "ann@team.example", ("bob@team.example", "x@c.com"), (), (),
     "ann@team.example"),
]
# fmt: on


@pytest.mark.parametrize(
    ("account", "direction", "sender", "to", "cc", "bcc", "owner"),
    [case[1:] for case in OWNER_CASES],
    ids=[case[0] for case in OWNER_CASES],
)
def test_the_email_belongs_to_the_rep_whose_mailbox_it_came_from(
    account: str,
    direction: Direction,
    sender: str,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    owner: str,
) -> None:
    assert owning_mailbox(message(account, direction, sender, to, cc, bcc), TEAM) == owner


USERS = [
    CrmUser("7", "ann.sales@team.example", "Ann"),
    CrmUser("8", "bob@team.example", "Bob"),
    CrmUser("9", "someone@team.example", "Someone"),
]


def test_a_mailbox_maps_to_the_user_with_its_address_or_an_alias() -> None:
    assert match_user(ANN, USERS).user == USERS[0]
    assert match_user(ANN, USERS).source == BY_EMAIL
    assert match_user(BOB, USERS).user_id == "8"


def test_the_address_itself_wins_over_an_alias() -> None:
    users = [CrmUser("7", "ann.sales@team.example"), CrmUser("6", "ANN@team.example")]
    assert match_user(ANN, users).user_id == "6"


def test_a_mailbox_no_user_has_gets_none_and_a_reason() -> None:
    found = match_user(CAT, USERS)
    assert found.user is None and found.source is None
    assert found.reason is not None and "no CRM user" in found.reason


def test_a_user_set_by_hand_overrides_the_address() -> None:
    found = match_user(Mailbox("bob@team.example", (), "9"), USERS)
    assert (found.user_id, found.source) == ("9", BY_HAND)


def test_a_user_set_by_hand_who_is_not_a_user_is_not_used() -> None:
    found = match_user(Mailbox("bob@team.example", (), "99"), USERS)
    assert found.user is None and found.reason is not None and "99" in found.reason


def test_unreadable_users_trust_the_hand_set_user_and_guess_no_other() -> None:
    assert match_user(Mailbox("bob@team.example", (), "9"), None).user_id == "9"
    found = match_user(BOB, None, "403 Forbidden")
    assert found.user is None and found.reason is not None and "403" in found.reason


def test_draft_carries_owner_and_organization_through_the_outbox_json() -> None:
    m = message("ann@team.example", OUT, "ann@team.example", ("x@c.com",))
    draft = draft_for(m, (4,), (), owner_id="7", organization_id="3")
    again = draft_from_json(draft_to_json(draft))
    assert (again.owner_id, again.organization_id) == ("7", "3")


def test_a_draft_stored_before_owners_reads_back_without_owner() -> None:
    m = message("ann@team.example", OUT, "ann@team.example", ("x@c.com",))
    data = draft_to_json(draft_for(m, (4,), ()))
    del data["owner_id"], data["organization_id"]
    assert draft_from_json(data).owner_id is None
    assert draft_from_json(data).organization_id is None


# -- the users list and the activity's owner, against the sandbox ------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox(clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def sandbox(server: PipedriveSandbox) -> PipedriveSandbox:
    server.reset()
    server.burst_per_2s = server.daily_token_budget = None
    return server


@pytest.fixture
def crm(sandbox: PipedriveSandbox) -> PipedriveCRM:
    return PipedriveCRM(sandbox.url, api_token=sandbox.api_token)


def activity(key: str, person_ids: tuple[int, ...], **changes: Any) -> ActivityDraft:
    fields: dict[str, Any] = {
        "key": key,
        "subject": "Quote",
        "when": WHEN,
        "person_ids": person_ids,
        "items": (),
        "note": f"maillink-id: {key}",
    }
    return ActivityDraft(**{**fields, **changes})


def test_users_list_costs_what_the_spec_says() -> None:
    assert TOKEN_COSTS["users.list"] == openapi_check.token_cost("/api/v1/users", "GET")


def test_users_answer_in_the_shape_of_the_spec(sandbox: PipedriveSandbox) -> None:
    sandbox.add_user("Ann Rep", "ann@team.example")
    sandbox.add_user("Gone Rep", "gone@team.example", active=False)
    response = requests.get(
        sandbox.url + "/api/v1/users", headers={"x-api-token": sandbox.api_token}, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert openapi_check.response_errors("/api/v1/users", "GET", 200, body) == []
    assert [u["email"] for u in body["data"]][1:] == ["ann@team.example", "gone@team.example"]
    assert [u["is_you"] for u in body["data"]] == [True, False, False]


def test_users_are_the_active_ones_read_once_until_forgotten(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_user("Ann Rep", "Ann@Team.example")
    sandbox.add_user("Gone Rep", "gone@team.example", active=False)
    users = crm.users()
    assert CrmUser(str(ann), "ann@team.example", "Ann Rep") in users
    assert "gone@team.example" not in {u.email for u in users}
    assert crm.users() == users
    assert sandbox.meter.requests["users.list"] == 1
    assert crm.tokens_spent == TOKEN_COSTS["users.list"]
    crm.forget_cached()
    crm.users()
    assert sandbox.meter.requests["users.list"] == 2


def test_users_are_read_again_once_their_ttl_expired(sandbox: PipedriveSandbox) -> None:
    now = [0.0]
    crm = PipedriveCRM(sandbox.url, api_token=sandbox.api_token, users_ttl=60, clock=lambda: now[0])
    crm.users()
    sandbox.add_user("New Rep", "new@team.example")
    now[0] = 30.0
    assert "new@team.example" not in {u.email for u in crm.users()}
    now[0] = 61.0
    assert "new@team.example" in {u.email for u in crm.users()}


def test_activity_is_written_with_its_owner_and_organization_as_the_spec_says(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    org = sandbox.add_organization("Customer Ltd")
    person = sandbox.add_person("Xavier", ["x@customer.example"], org_id=org)
    ann = sandbox.add_user("Ann Rep", "ann@team.example")
    created = crm.create_activity(
        activity("k1", (person,), owner_id=str(ann), organization_id=str(org))
    )
    written = sandbox.activities()[0]
    assert (written["id"], written["owner_id"], written["org_id"]) == (int(created), ann, org)
    posted = [r for r in sandbox.received if r.operation == "activities.create"]
    assert openapi_check.request_errors(posted[0].path, "POST", posted[0].body) == []


def test_activity_without_owner_belongs_to_the_tokens_user(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    person = sandbox.add_person("Xavier", ["x@customer.example"])
    crm.create_activity(activity("k1", (person,)))
    posted = [r for r in sandbox.received if r.operation == "activities.create"]
    assert "owner_id" not in posted[0].body and "org_id" not in posted[0].body
    assert sandbox.activities()[0]["owner_id"] == 1


def test_an_update_keeps_or_moves_the_owner(sandbox: PipedriveSandbox, crm: PipedriveCRM) -> None:
    person = sandbox.add_person("Xavier", ["x@customer.example"])
    ann = sandbox.add_user("Ann Rep", "ann@team.example")
    bob = sandbox.add_user("Bob Rep", "bob@team.example")
    created = crm.create_activity(activity("k1", (person,), owner_id=str(ann)))
    crm.update_activity(created, activity("k1", (person,)))
    assert sandbox.activities()[0]["owner_id"] == ann
    crm.update_activity(created, activity("k1", (person,), owner_id=str(bob)))
    assert sandbox.activities()[0]["owner_id"] == bob


def test_an_unknown_owner_is_refused_for_good_not_taken_for_a_gone_record(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    person = sandbox.add_person("Xavier", ["x@customer.example"])
    with pytest.raises(CRMRefused) as refused:
        crm.create_activity(activity("k1", (person,), owner_id="99"))
    assert refused.value.status == 400 and "User with id 99" in refused.value.answer
    assert not isinstance(refused.value, CRMRecordGone)


def test_persons_carry_their_organization_from_search_and_listing(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    org = sandbox.add_organization("Customer Ltd")
    sandbox.add_person("Xavier", ["x@customer.example"], org_id=org)
    sandbox.add_person("Yvonne", ["y@customer.example"])
    assert [p.organization_id for p in crm.search_persons("x@customer.example")] == [str(org)]
    assert [p.organization_id for p in crm.search_persons("y@customer.example")] == [None]
    listed = {p.name: p.organization_id for p in crm.list_records(None, 100).persons}
    assert listed == {"Xavier": str(org), "Yvonne": None}
    for received in sandbox.received:
        assert received.operation in {"persons.search", "persons.list", "deals.list", "leads.list"}
    search = requests.get(
        sandbox.url + "/api/v2/persons/search",
        params={"term": "x@customer.example", "fields": "email", "exact_match": "true"},
        headers={"x-api-token": sandbox.api_token},
        timeout=10,
    )
    errors = openapi_check.response_errors("/api/v2/persons/search", "GET", 200, search.json())
    assert errors == []


def test_owners_read_the_users_once_for_a_round(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_user("Ann Rep", "ann@team.example")
    owners = Owners(crm, TEAM)
    assert sandbox.meter.requests["users.list"] == 0
    inbound = message("bob@team.example", IN, "x@c.com", ("ann@team.example",))
    outbound = message("bob@team.example", OUT, "bob@team.example", ("x@c.com",))
    assert owners.owner_id(inbound) == str(ann)
    assert owners.owner_id(outbound) is None  # bob has no Pipedrive user
    assert sandbox.meter.requests["users.list"] == 1


def test_users_that_cannot_be_read_leave_every_email_without_owner_but_hand_set_ones(
    sandbox: PipedriveSandbox,
) -> None:
    crm = PipedriveCRM(sandbox.url, api_token=sandbox.api_token, max_retries=0)
    sandbox.add_user("Ann Rep", "ann@team.example")
    sandbox.faults.add(Fault(status=503, times=1, path="/api/v1/users"))
    found = ownerships(crm, [ANN, Mailbox("bob@team.example", (), "8")])
    assert found["ann@team.example"].user is None
    assert "503" in (found["ann@team.example"].reason or "")
    assert found["bob@team.example"].user_id == "8"
    with pytest.raises(CRMUnavailable):  # the adapter itself says so; owners absorb it
        sandbox.faults.add(Fault(status=503, times=1, path="/api/v1/users"))
        crm.users()


def test_a_round_fails_rather_than_write_without_owners_when_pipedrive_is_unavailable(
    sandbox: PipedriveSandbox,
) -> None:
    crm = PipedriveCRM(sandbox.url, api_token=sandbox.api_token, max_retries=0)
    sandbox.faults.add(Fault(status=503, times=1, path="/api/v1/users"))
    with pytest.raises(CRMUnavailable):
        Owners(crm, TEAM).resolve()


def test_a_token_that_may_not_read_users_writes_without_owners(sandbox: PipedriveSandbox) -> None:
    crm = PipedriveCRM(sandbox.url, api_token=sandbox.api_token, max_retries=0)
    sandbox.add_user("Ann Rep", "ann@team.example")
    body = '{"success": false, "error": "Scope users:read is missing"}'
    sandbox.faults.add(Fault(status=403, times=1, path="/api/v1/users", body=body))
    owners = Owners(crm, TEAM).resolve()
    assert (
        owners.owner_id(message("ann@team.example", OUT, "ann@team.example", ("x@c.com",))) is None
    )
