"""Gmail and Graph agree: the same email normalizes to the same `Message` and the same key, the
same conversation gets the same thread start and the same links, and an email between a Gmail
rep and an Outlook rep makes one CRM activity — through both sandboxes and the real adapters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from maillink.crm.pipedrive import PipedriveCRM
from maillink.linking.facts import Facts, LinkingPolicy, ThreadInput
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.linking.rules import decide_thread
from maillink.model import Item, ItemKind, ItemRef, Message, Person
from maillink.outbox import Outbox
from maillink.providers.base import MailProvider, Page
from maillink.providers.gmail import GmailProvider
from maillink.providers.gmail_api import SCOPE_METADATA
from maillink.providers.graph import GraphProvider
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.store import Store, accounts
from maillink.sync import Syncer

REP = "rep@acme.example"
ANA = "ana@client.example"
T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


class Known:
    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.dates: dict[str, datetime] = {}

    def known_messages(self, ids: Iterable[str]) -> set[str]:
        return {i for i in ids if i in self.messages}

    def thread_dates(self, keys: Iterable[str]) -> dict[str, datetime]:
        return {k: self.dates[k] for k in keys if k in self.dates}

    def sync(self, provider: MailProvider, **kwargs: Any) -> None:
        for page in provider.pull(None, self, **kwargs):
            self.commit(page)

    def commit(self, page: Page) -> None:
        for message in page.messages:
            self.messages[message.provider_id] = message
            first = [d for d in (page.thread_dates.get(message.thread_key), message.date) if d]
            if message.thread_key in self.dates:
                first.append(self.dates[message.thread_key])
            self.dates[message.thread_key] = min(first)


# One conversation, as (sent by the rep?, minutes after T0, Message-ID, To, Cc)
CONVERSATION = [
    (False, 0, "<q1@client.example>", [f"Rep <{REP.upper()}>"], ["Bob <bob@bücher.example>"]),
    (True, 60, "<r1@acme.example>", [f"Ana <{ANA}>"], []),
    (False, 24 * 60, "<q2@client.example>", [REP], []),
    (True, 3 * 24 * 60, "<r2@acme.example>", [ANA], ["boss@acme.example"]),
]


def gmail_mailbox(google: GoogleSandbox) -> Credentials:
    google.add_mailbox(REP)
    thread: str | None = None
    for sent, minutes, message_id, to, cc in CONVERSATION:
        when = T0 + timedelta(minutes=minutes)
        headers = [
            ("From", f"Rep <{REP}>" if sent else f'"Ana Client" <{ANA}>'),
            ("To", ", ".join(to)),
            ("Subject", "Renewal terms" if not minutes else "Re: Renewal terms"),
            ("Date", format_datetime(when)),
            ("Message-ID", message_id),
        ]
        if cc:
            headers.append(("Cc", ", ".join(cc)))
        added = google.add_message(
            REP,
            headers=headers,
            internal_date=when,
            thread_id=thread,
            label_ids=("SENT",) if sent else ("INBOX",),
        )
        thread = thread or added
    return Credentials(
        None,
        refresh_token=google.issue_refresh_token(REP),
        token_uri=google.token_uri,
        client_id=google.client_id,
        client_secret=google.client_secret,
        scopes=[SCOPE_METADATA],
    )


def outlook_mailbox(ms: MicrosoftSandbox) -> None:
    ms.add_mailbox(REP)
    for sent, minutes, message_id, to, cc in CONVERSATION:
        when = T0 + timedelta(minutes=minutes)
        ms.add_message(
            REP,
            "sentitems" if sent else "inbox",
            internet_message_id=message_id,
            subject="Renewal terms" if not minutes else "Re: Renewal terms",
            sender=f"Rep <{REP}>" if sent else f"Ana Client <{ANA}>",
            to=to,
            cc=cc,
            received=when,
            conversation_id="AAQkADrenewal=",
        )


@pytest.fixture
def both() -> Iterator[tuple[Known, Known]]:
    with GoogleSandbox() as google, MicrosoftSandbox() as ms:
        credentials = gmail_mailbox(google)
        outlook_mailbox(ms)
        gmail, graph = Known(), Known()
        gmail.sync(GmailProvider(REP, credentials, api_endpoint=google.api_endpoint))
        token = ms.access_token(REP)
        graph.sync(
            GraphProvider(REP, lambda: token, graph_url=ms.graph_url, ca_bundle=ms.ca_bundle)
        )
        yield gmail, graph


def comparable(message: Message) -> tuple[Any, ...]:
    """What the linker and the CRM note use (provider ids, thread ids and labels differ)."""
    return (
        message.key,
        message.message_id,
        message.date,
        message.direction,
        message.sender,
        message.to,
        message.cc,
        message.subject,
        message.in_reply_to,
        message.date_header,
        message.problems,
    )


def test_the_same_email_normalizes_the_same_through_gmail_and_graph(
    both: tuple[Known, Known],
) -> None:
    gmail, graph = both
    from_gmail = sorted(map(comparable, gmail.messages.values()), key=lambda c: c[2])
    from_graph = sorted(map(comparable, graph.messages.values()), key=lambda c: c[2])
    assert len(from_gmail) == len(CONVERSATION) and from_gmail == from_graph
    assert [c[0] for c in from_graph] == [
        "q1@client.example",
        "r1@acme.example",
        "q2@client.example",
        "r2@acme.example",
    ]
    assert list(gmail.dates.values()) == list(graph.dates.values()) == [T0]


def test_the_same_conversation_gets_the_same_links_through_gmail_and_graph(
    both: tuple[Known, Known],
) -> None:
    ana = Person(1, "Ana Client", (ANA,))
    deal = Item(ItemRef(ItemKind.DEAL, 10), "Renewal", frozenset({1}), T0 - timedelta(days=30))
    late = Item(ItemRef(ItemKind.DEAL, 11), "Upsell", frozenset({1}), T0 + timedelta(minutes=30))
    facts = Facts(persons_by_email={ANA: [ana]}, items_by_person={1: [deal, late]})
    policy = LinkingPolicy(
        own_addresses=frozenset({REP}), internal_domains=frozenset({"acme.example"})
    )

    outcomes = []
    for known in both:
        (key,) = known.dates
        thread = ThreadInput(key, known.dates[key], list(known.messages.values()))
        outcome = decide_thread(thread, facts, policy)
        by_id = {m.provider_id: m.key for m in known.messages.values()}
        decisions = sorted(
            (by_id[d.provider_id], d.reason, d.items, d.candidates) for d in outcome.decisions
        )
        outcomes.append((outcome.linked, outcome.waiting, decisions))

    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == deal.ref  # the late deal was created after the thread: not a candidate


def test_a_gmail_rep_writing_to_an_outlook_rep_and_a_customer_makes_one_activity(
    tmp_path: Path,
) -> None:
    gmail_rep, outlook_rep = "gina@acme.example", "otto@acme.example"
    when = T0 + timedelta(hours=2)
    headers = [
        ("From", f"Gina <{gmail_rep}>"),
        ("To", f"Otto <{outlook_rep}>, Ana <{ANA}>"),
        ("Subject", "Proposal"),
        ("Date", format_datetime(when)),
        ("Message-ID", "<CAF=proposal-1@mail.gmail.com>"),
    ]
    with (
        GoogleSandbox() as google,
        MicrosoftSandbox() as ms,
        PipedriveSandbox() as pipedrive,
    ):
        google.add_mailbox(gmail_rep)
        google.add_message(gmail_rep, headers=headers, internal_date=when, label_ids=("SENT",))
        ms.add_mailbox(outlook_rep)
        ms.add_message_from_headers(
            outlook_rep, "inbox", headers, received=when + timedelta(seconds=3)
        )
        person = pipedrive.add_person("Ana Client", [ANA])
        pipedrive.add_deal("Renewal", person, add_time=T0 - timedelta(days=10))

        store = Store.open(f"sqlite:///{tmp_path / 'maillink.db'}")
        try:
            crm = PipedriveCRM(pipedrive.url, api_token=pipedrive.api_token)
            policy = LinkingPolicy(
                own_addresses=frozenset({gmail_rep, outlook_rep}),
                internal_domains=frozenset({"acme.example"}),
            )
            linker = Linker(store, FactGatherer(store, crm, CacheTTL()), policy)
            syncer = Syncer(store, linker, Outbox(store, crm))
            with store.transaction() as conn:
                gina = accounts.upsert(conn, gmail_rep, "gmail", "-", SCOPE_METADATA)
                otto = accounts.upsert(
                    conn, outlook_rep, "microsoft", "-", "Mail.ReadBasic User.Read"
                )
            gmail = GmailProvider(
                gmail_rep,
                Credentials(
                    None,
                    refresh_token=google.issue_refresh_token(gmail_rep),
                    token_uri=google.token_uri,
                    client_id=google.client_id,
                    client_secret=google.client_secret,
                    scopes=[SCOPE_METADATA],
                ),
                api_endpoint=google.api_endpoint,
            )
            token = ms.access_token(outlook_rep)
            graph = GraphProvider(
                outlook_rep, lambda: token, graph_url=ms.graph_url, ca_bundle=ms.ca_bundle
            )

            first = syncer.run(gina, gmail)
            second = syncer.run(otto, graph)

            assert first.error is None and second.error is None
            assert first.messages == second.messages == 1
            assert first.delivery.created == 1 and second.delivery.created == 0
            assert len(pipedrive.activities_with_key("CAF=proposal-1@mail.gmail.com")) == 1
            assert len(pipedrive.activities()) == 1
        finally:
            store.close()


@pytest.mark.parametrize("reply_headers", [False, True])
def test_a_generated_mailbox_reads_the_same_through_gmail_and_graph(reply_headers: bool) -> None:
    from maillink.sandbox.seed import generate_team

    team = generate_team(messages=300, seed=3, now=T0)
    rep = team.reps[0]
    with GoogleSandbox() as google, MicrosoftSandbox() as ms:
        google.add_mailbox(rep)
        ms.add_mailbox(rep)
        gmail_threads: dict[tuple[int, str], str] = {}
        for index, thread in enumerate(team.threads):
            for message in thread.messages:
                if rep in message.mailboxes:
                    added = google.add_message(
                        rep,
                        headers=message.headers,
                        internal_date=message.date,
                        thread_id=gmail_threads.get((index, rep)),
                        label_ids=("SENT",) if message.sent_by == rep else ("INBOX",),
                    )
                    gmail_threads.setdefault((index, rep), added)
            ms.add_seed_thread(index, thread.messages)
        gmail, graph = Known(), Known()
        credentials = Credentials(
            None,
            refresh_token=google.issue_refresh_token(rep),
            token_uri=google.token_uri,
            client_id=google.client_id,
            client_secret=google.client_secret,
            scopes=[SCOPE_METADATA],
        )
        gmail.sync(GmailProvider(rep, credentials, api_endpoint=google.api_endpoint))
        token = ms.access_token(rep)
        graph.sync(
            GraphProvider(
                rep,
                lambda: token,
                graph_url=ms.graph_url,
                ca_bundle=ms.ca_bundle,
                reply_headers=reply_headers,
            )
        )

    def by_key(known: Known) -> dict[str, tuple[Any, ...]]:
        found = {}
        for m in known.messages.values():
            # Graph writes DateTimeOffsets to the second, Gmail's internalDate to the millisecond;
            # In-Reply-To and References come only with internetMessageHeaders (reply_headers).
            m = replace(m, date=seconds(m.date))
            if not reply_headers:
                m = replace(m, in_reply_to=None, references=())
            found[m.key] = (*comparable(m), m.references)
        return found

    assert len(graph.messages) > 100
    assert by_key(gmail) == by_key(graph)
    thread_of = {m.key: m.thread_key for m in graph.messages.values()}
    gmail_dates = {m.key: seconds(gmail.dates[m.thread_key]) for m in gmail.messages.values()}
    assert {k: graph.dates[t] for k, t in thread_of.items()} == gmail_dates


def seconds(when: datetime | None) -> datetime | None:
    return when.replace(microsecond=0) if when is not None else None
