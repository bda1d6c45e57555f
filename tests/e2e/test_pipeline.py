"""The whole pipeline through real HTTP: Gmail sandbox → store → rules → outbox → CRM sandbox.

The rules' tests run on both CRMs (`both_crms`) and assert the same outcomes for the same mail
and the same deals; the Pipedrive-specific ones (its token budget) on Pipedrive only.
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from tests.e2e.support import DOMAIN, NOW, REP, CrmSandbox, both_crms, connect

from maillink.app import App
from maillink.choices import choose_item
from maillink.config import load_settings
from maillink.daemon import sync_round
from maillink.model import ItemRef, Message
from maillink.outbox import Outbox, pending_count
from maillink.providers.headers import message_from_headers
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts
from maillink.store import mail as store_mail

BOB = f"bob@{DOMAIN}"
ANN = "ann@customer.example"
CAT = "cat@other.example"
_ids = itertools.count(1)


def send(
    google: GoogleSandbox,
    mailbox: str,
    *,
    frm: str,
    to: str,
    date: datetime,
    thread: str | None = None,
    mid: str | None = None,
    subject: str = "Quote",
) -> str:
    mid = mid or f"<m{next(_ids)}@mail.example>"
    headers = [
        ("From", frm),
        ("To", to),
        ("Subject", subject),
        ("Date", format_datetime(date)),
        ("Message-ID", mid),
    ]
    labels = ("SENT",) if frm == mailbox else ("INBOX",)
    return google.add_message(
        mailbox, headers=headers, internal_date=date, thread_id=thread, label_ids=labels
    )


def backfill_all(app: App) -> None:
    syncer = app.syncer()
    for account in app.store_accounts():
        result = syncer.backfill(account, app.provider_for(account))
        assert result.error is None, result.error


def reasons_by_subject(app: App) -> dict[str, str]:
    with app.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT headers, reason FROM messages").all()
    import json

    return {(json.loads(h) if isinstance(h, str) else h)["subject"]: reason for h, reason in rows}


@pytest.fixture
def team(app: App, google: GoogleSandbox) -> App:
    google.add_mailbox(REP)
    connect(app, google, REP)
    return app


@both_crms
def test_one_open_deal_links_the_thread_and_a_rerun_writes_nothing_new(
    team: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    first = send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=3), mid="<one-0@x>")
    send(google, REP, frm=REP, to=ANN, date=NOW - timedelta(days=2), thread=first, mid="<one-1@x>")

    backfill_all(team)
    emails = crm.emails()
    assert sorted(e.key for e in emails) == ["one-0@x", "one-1@x"]  # found again by this key
    assert {e.items for e in emails} == {frozenset({f"deal:{deal}"})}
    assert {e.persons for e in emails} == {frozenset({ann})}

    for _ in range(2):
        results = sync_round(team)
        assert [r.error for r in results] == [None]
    assert len(crm.emails()) == 2


@pytest.mark.parametrize("crm", ["pipedrive", "hubspot"], indirect=True)
@pytest.mark.parametrize("closing", ["deal won", "deal lost", "lead closed"])
def test_an_item_closed_between_two_messages_keeps_the_first_and_not_the_second(
    team: App, google: GoogleSandbox, crm: CrmSandbox, closing: str
) -> None:
    """Rule 6 for each way an item closes: the CRM tells it by polling, and the thread's later
    message goes to its persons only."""
    ann = crm.add_person("Ann", [ANN])
    if closing.startswith("deal"):
        item = f"deal:{crm.add_deal('Licences', ann, add_time=NOW - timedelta(days=30))}"
    else:
        item = f"lead:{crm.add_lead('Upsell', ann, add_time=NOW - timedelta(days=30))}"
    first = send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=3), subject="before")
    backfill_all(team)
    sync_round(team)  # the CRM changes poll starts here

    closed_at = NOW - timedelta(hours=1)
    item_id = item.partition(":")[2]
    if closing == "lead closed":
        crm.close_lead(item_id, at=closed_at)
    else:
        crm.set_deal_status(int(item_id), closing.split()[1], at=closed_at)
    send(google, REP, frm=ANN, to=REP, date=NOW, thread=first, subject="after")
    sync_round(team)

    assert reasons_by_subject(team) == {
        "before": "single_open_item",
        "after": "item_closed_before_message",
    }
    by_subject = {e.subject: e for e in crm.emails()}
    assert by_subject["before"].items == {item}
    assert by_subject["after"].items == set()
    assert by_subject["after"].persons == {ann}


@pytest.mark.parametrize(
    ("crm", "chosen"),
    [
        ("pipedrive", "deal"),
        ("pipedrive", "lead"),
        ("hubspot", "deal"),
        ("hubspot", "lead"),
    ],
    indirect=["crm"],
)
def test_several_open_items_wait_and_the_users_choice_relinks_the_thread(
    team: App, google: GoogleSandbox, crm: CrmSandbox, chosen: str
) -> None:
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    lead = crm.add_lead("Upsell", ann, add_time=NOW - timedelta(days=20))
    first = send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=3))
    send(google, REP, frm=REP, to=ANN, date=NOW - timedelta(days=2), thread=first)
    backfill_all(team)

    with team.store.engine.connect() as conn:
        (waiting,) = store_mail.waiting_threads(conn)
    assert set(waiting.candidates) == {ItemRef.parse(f"deal:{deal}"), ItemRef.parse(f"lead:{lead}")}
    assert [e.items for e in crm.emails()] == [frozenset(), frozenset()]  # persons only

    item = f"deal:{deal}" if chosen == "deal" else f"lead:{lead}"
    text = choose_item(team, waiting.id, ItemRef.parse(item))
    assert "2 message(s) linked" in text
    emails = crm.emails()
    assert len(emails) == 2
    assert {e.items for e in emails} == {frozenset({item})}

    send(google, REP, frm=ANN, to=REP, date=NOW, thread=first)  # later messages follow
    sync_round(team)
    emails = crm.emails()
    assert len(emails) == 3
    assert {e.items for e in emails} == {frozenset({item})}
    with team.store.engine.connect() as conn:
        assert store_mail.waiting_threads(conn) == []


@both_crms
def test_the_same_email_in_two_connected_mailboxes_makes_one_activity(
    team: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    google.add_mailbox(BOB)
    connect(team, google, BOB)
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    shared = "<shared-1@mail.example>"
    send(google, REP, frm=REP, to=f"{ANN}, {BOB}", date=NOW - timedelta(days=1), mid=shared)
    send(google, BOB, frm=REP, to=f"{ANN}, {BOB}", date=NOW - timedelta(days=1), mid=shared)

    backfill_all(team)
    assert crm.email("shared-1@mail.example").items == {f"deal:{deal}"}
    assert len(crm.emails()) == 1


@both_crms
def test_a_create_whose_answer_was_lost_is_found_again_not_duplicated(
    team: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    """Pipedrive: the write waits in the outbox and the next delivery finds it by its key in
    the person's activities. HubSpot: the adapter reads the key back at once (unique property)."""
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=1), mid="<lost@mail.example>")
    crm.lose_next_create()

    backfill_all(team)
    assert len(crm.emails_with_key("lost@mail.example")) == 1  # created, answer lost

    later = Outbox(
        team.store, team.crm, clock=lambda: datetime.now(NOW.tzinfo) + timedelta(hours=2)
    )
    delivery = later.deliver()
    assert delivery.created == 0
    assert crm.email("lost@mail.example").items == {f"deal:{deal}"}
    with team.store.engine.connect() as conn:
        assert pending_count(conn) == 0


@pytest.mark.pipedrive_only  # Pipedrive's daily token budget: HubSpot counts requests, not tokens
def test_crm_writes_are_parked_when_the_daily_budget_is_spent_and_mail_keeps_syncing(
    team: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    ann = pipedrive.add_person("Ann", [ANN])
    pipedrive.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=1))
    team.facts.gather([ANN])  # the facts are cached before the budget runs out
    from maillink.sandbox._server import Fault

    pipedrive.faults.add(
        Fault(
            path=r"/api/v2/activities$",
            method="POST",
            status=429,
            headers={"x-daily-ratelimit-token-remaining": "0", "Retry-After": "3600"},
            body='{"success": false, "error": "Daily token budget exceeded"}',
        )
    )
    backfill_all(team)
    assert pipedrive.activities() == []
    assert team.outbox.parked_until() is not None
    with team.store.engine.connect() as conn:
        assert pending_count(conn) == 1
        stored = conn.exec_driver_sql("SELECT reason FROM messages").scalars().all()
    assert stored == ["single_open_item"]


@both_crms
def test_any_arrival_order_and_page_split_gives_the_same_links(
    tmp_path_factory: pytest.TempPathFactory, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    """Rule replay: the same thread delivered in pages of any size and order ends the same."""
    ann = crm.add_person("Ann", [ANN])
    cat = crm.add_person("Cat", [CAT])
    crm.add_deal("Ann's", ann, add_time=NOW - timedelta(days=40))
    crm.add_deal("Cat's", cat, add_time=NOW - timedelta(days=40))
    start = NOW - timedelta(days=10)
    specs = [(ANN, REP), (REP, ANN), (ANN, f"{REP}, {CAT}"), (CAT, REP), (REP, f"{ANN}, {CAT}")]
    messages: list[Message] = []
    for i, (frm, to) in enumerate(specs):
        headers = [("From", frm), ("To", to), ("Subject", f"m{i}"), ("Message-ID", f"<o{i}@x>")]
        date = start + timedelta(days=i)
        messages.append(message_from_headers(REP, f"id{i}", "t1", headers, internal_date=date))

    outcomes = []
    rng = random.Random(5)
    for trial in range(6):
        order = messages[:]
        rng.shuffle(order)
        cut = sorted(rng.sample(range(1, len(order)), rng.randint(0, 3)))
        pages = [order[a:b] for a, b in zip([0, *cut], [*cut, len(order)], strict=True)]
        folder = tmp_path_factory.mktemp(f"order{trial}")
        app = App(load_settings(_workspace(folder, google, crm)))
        with app.store.transaction() as conn:
            account = accounts.upsert(conn, REP, "gmail", "unused", "")
        linker = app.linker()
        for page in pages:
            with app.store.transaction() as conn:
                touched = store_mail.save_messages(conn, account.id, page, {"t1": start})
            linker.decide(account, touched)
        with app.store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT provider_id, reason, items FROM messages ORDER BY provider_id"
            ).all()
        outcomes.append([tuple(map(str, row)) for row in rows])
        app.close()
    assert all(o == outcomes[0] for o in outcomes), outcomes
    assert [r for _, r, _ in outcomes[0]] == ["single_open_item", "linked_thread_item"] + [
        "linked_thread_item"
    ] * 3


def _workspace(folder: Path, google: GoogleSandbox, crm: CrmSandbox) -> Path:
    if crm.kind == "hubspot":
        return write_workspace(folder, google, None, hubspot=crm.sandbox, internal_domains=[DOMAIN])
    return write_workspace(folder, google, crm.sandbox, internal_domains=[DOMAIN])


@both_crms
def test_malformed_and_extreme_headers_are_each_decided_and_never_stop_the_round(
    team: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    from maillink.sandbox.seed import SeedPerson, Team, odd_messages

    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    customer = SeedPerson("Ann", ANN, known=True, crm_id=ann)
    odd = odd_messages(Team(DOMAIN, [REP], [customer], [], []), REP, NOW)
    for thread in odd:
        for message in thread.messages:
            google.add_message(REP, headers=message.headers, internal_date=message.date)

    backfill_all(team)
    with team.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT headers, reason, problems FROM messages").all()
    import json

    decided = {}
    for headers, reason, problems in rows:
        subject = (json.loads(headers) if isinstance(headers, str) else headers)["subject"]
        decided[subject] = (
            reason,
            problems if isinstance(problems, list) else json.loads(problems),
        )
    assert len(rows) == len(odd)
    assert all(reason is not None for reason, _ in decided.values())
    assert decided["500 recipients"][0] == "single_open_item"
    assert decided["same Message-ID again"][0] in ("duplicate_message", "linked_thread_item")
    assert "header_too_large" in decided["huge header"][1]
    assert decided["Café order"][0] == "single_open_item"  # RFC 2047 decoded
    assert "no_from" in decided["no sender"][1]
    # What reached the CRM: each email at most once, linked to Ann's deal when decided so.
    # What reached the CRM: one email each for Ann's messages (the second copy of a Message-ID
    # is the first's), each linked to Ann and her deal.
    emails = crm.emails()
    assert sorted(e.subject for e in emails) == [
        "(no subject)",
        "500 recipients",
        "Café order",
        "first copy",
        "huge header",
        "no date header",
    ]
    assert {(e.items, e.persons) for e in emails} == {
        (frozenset({f"deal:{deal}"}), frozenset({ann}))
    }


@both_crms
def test_a_deal_created_after_the_thread_started_is_not_linked_and_one_before_is(
    team: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    """Rule 2: no retroactive linking; the thread's first date is the provider's."""
    ann = crm.add_person("Ann", [ANN])
    cat = crm.add_person("Cat", [CAT])
    crm.add_deal("Ann's late deal", ann, add_time=NOW - timedelta(days=5))
    early = crm.add_deal("Cat's deal", cat, add_time=NOW - timedelta(days=30))
    first = send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=10), subject="ann 1")
    send(google, REP, frm=REP, to=ANN, date=NOW - timedelta(days=1), thread=first, subject="ann 2")
    send(google, REP, frm=CAT, to=REP, date=NOW - timedelta(days=1), subject="cat")

    backfill_all(team)
    assert reasons_by_subject(team) == {
        "ann 1": "item_created_after_thread",
        "ann 2": "item_created_after_thread",
        "cat": "single_open_item",
    }
    by_subject = {e.subject: e for e in crm.emails()}
    assert by_subject["ann 1"].items == by_subject["ann 2"].items == set()
    assert by_subject["ann 2"].persons == {ann}
    assert by_subject["cat"].items == {f"deal:{early}"}


@both_crms
def test_mail_with_no_known_contact_writes_nothing(
    team: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    crm.add_person("Ann", [ANN])
    send(google, REP, frm=CAT, to=REP, date=NOW - timedelta(days=1), subject="stranger")
    send(google, REP, frm=BOB, to=REP, date=NOW - timedelta(days=1), subject="colleague")

    backfill_all(team)
    assert reasons_by_subject(team) == {
        "stranger": "no_known_contact",
        "colleague": "internal_only",
    }
    assert crm.emails() == []


@both_crms
def test_policy_all_links_the_email_to_every_candidate_the_crm_can_hold(
    config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    """The same decision on both CRMs; what each CRM keeps of it differs by the CRM's own rule."""
    config.write_text(
        config.read_text().replace('multiple_open_items = "ask"', 'multiple_open_items = "all"')
    )
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    lead = crm.add_lead("Upsell", ann, add_time=NOW - timedelta(days=20))
    google.add_mailbox(REP)
    send(google, REP, frm=ANN, to=REP, date=NOW - timedelta(days=1), subject="both")
    app = App(load_settings(config))
    try:
        connect(app, google, REP)
        backfill_all(app)
        assert reasons_by_subject(app) == {"both": "all_open_items"}
    finally:
        app.close()
    (email,) = crm.emails()
    if crm.kind == "hubspot":  # an engagement is associated with a deal and a lead
        assert email.items == {f"deal:{deal}", f"lead:{lead}"}
    else:  # a Pipedrive activity keeps one link: deal before lead before project
        assert email.items == {f"deal:{deal}"}
