"""A generated sales team: reps' mailboxes, customers, their deals/leads/projects, and threads.

Deterministic for a seed. The mix of threads is chosen so that every linking outcome of the rules
(docs/linking-rules.md) happens: one open item, several, none, a deal created after the thread, a deal closed before or
during it, unknown contacts, internal mail, blocked senders, and malformed headers.
`load_team` puts it into the Google and Pipedrive sandboxes.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

FIRST = [
    "ada",
    "ben",
    "carla",
    "dev",
    "elif",
    "femi",
    "gus",
    "hana",
    "ivo",
    "jun",
    "kofi",
    "lena",
    "milo",
    "nora",
    "omar",
    "pia",
    "quin",
    "rosa",
    "sven",
    "tara",
    "uma",
    "vik",
    "wren",
    "yara",
    "zeno",
]
LAST = [
    "adams",
    "berg",
    "chen",
    "diaz",
    "evans",
    "fischer",
    "gomez",
    "holm",
    "ito",
    "jones",
    "kim",
    "lopez",
    "moreau",
    "novak",
    "okafor",
    "park",
    "quist",
    "rossi",
    "silva",
    "tanaka",
    "ueda",
    "vidal",
    "weber",
    "xu",
    "young",
]
COMPANIES = [
    "acorn",
    "birch",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lumen",
    "meridian",
]
SUBJECTS = [
    "Quote for the new licences",
    "Follow-up on our call",
    "Renewal terms",
    "Onboarding plan",
    "Pricing question",
    "Contract draft v2",
    "Intro: our team",
    "Demo next week?",
]

# thread kinds and their share of threads
KINDS: tuple[tuple[str, float], ...] = (
    ("single", 0.36),  # the customer has one open deal, older than the thread
    ("multi", 0.08),  # an open deal and an open lead → the user chooses
    ("late_deal", 0.08),  # the deal was created after the thread started
    ("closed_before", 0.06),  # the only deal was lost before the thread
    ("won_midway", 0.05),  # the deal was won while the thread went on
    ("project", 0.04),  # one open project
    ("no_items", 0.08),  # a known person with no item at all
    ("unknown", 0.12),  # nobody in the CRM
    ("group", 0.05),  # several recipients, one of them with an open deal
    ("internal", 0.05),  # between colleagues only
    ("blocked", 0.03),  # notifications from a blocked sender
)


@dataclass
class SeedPerson:
    name: str
    email: str
    known: bool  # exists in the CRM
    crm_id: int | None = None


@dataclass
class SeedItem:
    kind: str  # deal | lead | project
    title: str
    person: SeedPerson
    created: datetime
    status: str = "open"  # open | won | lost (deal), archived (lead), closed (project)
    closed: datetime | None = None
    crm_id: int | str | None = None


@dataclass
class SeedMessage:
    mailboxes: list[str]  # reps whose mailbox holds it (one email can reach two reps)
    headers: list[tuple[str, str]]
    date: datetime
    sent_by: str | None  # the rep who sent it, if any
    snippet: str = ""


@dataclass
class SeedThread:
    kind: str
    messages: list[SeedMessage] = field(default_factory=list)
    items: list[SeedItem] = field(default_factory=list)


@dataclass
class Team:
    domain: str
    reps: list[str]
    persons: list[SeedPerson]
    items: list[SeedItem]
    threads: list[SeedThread]

    @property
    def message_count(self) -> int:
        return sum(len(t.messages) for t in self.threads)


class _Gen:
    def __init__(
        self, rng: random.Random, domain: str, reps: list[str], start: datetime, end: datetime
    ):
        self.rng = rng
        self.domain = domain
        self.reps = reps
        self.start = start
        self.end = end
        self.persons: list[SeedPerson] = []
        self.items: list[SeedItem] = []
        self._customers: list[SeedPerson] = []
        self._regulars: list[tuple[SeedPerson, SeedItem]] = []

    def message_id(self) -> str:
        return f"<{uuid.UUID(int=self.rng.getrandbits(128))}@mail.{self.domain}>"

    def person(self, known: bool) -> SeedPerson:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        company = self.rng.choice(COMPANIES)
        n = len(self.persons)
        person = SeedPerson(
            f"{first.title()} {last.title()}", f"{first}.{last}.{n}@{company}.example", known
        )
        self.persons.append(person)
        return person

    def customer(self, known: bool = True) -> SeedPerson:
        person = self.person(known)
        self._customers.append(person)
        return person

    def returning(self, start: datetime) -> tuple[SeedPerson, SeedItem] | None:
        """Now and then, a customer with one open deal writes again about it (a new thread)."""
        if not self._regulars or self.rng.random() > 0.4:
            return None
        person, deal = self.rng.choice(self._regulars)
        return (person, deal) if deal.created < start else None

    def item(self, kind: str, person: SeedPerson, created: datetime, **kw: Any) -> SeedItem:
        item = SeedItem(
            kind, f"{person.name.split()[1]} {kind} {len(self.items) + 1}", person, created, **kw
        )
        self.items.append(item)
        return item

    def dates(self, count: int) -> list[datetime]:
        span = (self.end - self.start).total_seconds()
        first = self.start + timedelta(seconds=self.rng.uniform(0, span * 0.85))
        dates = [first]
        for _ in range(count - 1):
            dates.append(dates[-1] + timedelta(hours=self.rng.uniform(2, 96)))
        return [min(d, self.end) for d in dates]

    def thread(self, kind: str, size: int) -> SeedThread:
        rep = self.rng.choice(self.reps)
        dates = self.dates(size)
        thread = SeedThread(kind)
        parties = self._parties(kind, rep, dates, thread)
        subject = self.rng.choice(SUBJECTS)
        references: list[str] = []
        for i, date in enumerate(dates):
            outbound = kind != "blocked" and (i % 2 == 0) == (self.rng.random() < 0.5)
            message = self._message(kind, rep, parties, outbound, i, date, subject, references)
            thread.messages.append(message)
        return thread

    def _parties(
        self, kind: str, rep: str, dates: list[datetime], thread: SeedThread
    ) -> list[tuple[str, str]]:
        """Who the rep writes with (name, address), first the main party; their CRM items
        go into `thread.items`."""
        if kind == "internal":
            colleague = [r for r in self.reps if r != rep] or [f"ops@{self.domain}"]
            return [("Colleague", self.rng.choice(colleague))]
        if kind == "blocked":
            return [
                ("Notifications", f"noreply@notifications.{self.rng.choice(COMPANIES)}.example")
            ]
        start = dates[0]
        regular = self.returning(start) if kind == "single" else None
        customer = regular[0] if regular else self.customer(known=kind != "unknown")
        parties = [(customer.name, customer.email)]
        before = start - timedelta(days=self.rng.uniform(1, 60))
        if regular:
            thread.items.append(regular[1])
        else:
            thread.items.extend(self._customer_items(kind, customer, dates, before))
        if kind == "group":
            for _ in range(self.rng.randint(2, 3)):
                other = self.customer(known=False)
                parties.append((other.name, other.email))
        return parties

    def _customer_items(
        self, kind: str, customer: SeedPerson, dates: list[datetime], before: datetime
    ) -> list[SeedItem]:
        """The CRM items a thread of this kind is about, made before (or during) it."""
        start = dates[0]
        if kind in ("single", "group"):
            deal = self.item("deal", customer, before)
            if kind == "single":
                self._regulars.append((customer, deal))
            return [deal]
        if kind == "multi":
            deal = self.item("deal", customer, before)
            return [deal, self.item("lead", customer, before + timedelta(hours=3))]
        if kind == "late_deal":
            return [self.item("deal", customer, start + timedelta(hours=1))]
        if kind == "closed_before":
            closed = before - timedelta(days=30)
            return [self.item("deal", customer, closed, status="lost", closed=before)]
        if kind == "won_midway":
            won = (
                dates[len(dates) // 2] - timedelta(minutes=30)
                if len(dates) > 1
                else dates[0] + timedelta(hours=1)
            )
            return [self.item("deal", customer, before, status="won", closed=won)]
        if kind == "project":
            return [self.item("project", customer, before)]
        return []

    def _message(
        self,
        kind: str,
        rep: str,
        parties: list[tuple[str, str]],
        outbound: bool,
        i: int,
        date: datetime,
        subject: str,
        references: list[str],
    ) -> SeedMessage:
        """The thread's i-th message; its Message-ID joins `references` for the next ones."""
        name, addr = parties[0]
        rep_name = rep.split("@")[0].title()
        if outbound:
            sender, recipients = (rep_name, rep), parties
        else:
            sender, recipients = (name, addr), [(rep_name, rep)] + parties[1:]
        mid = self.message_id()
        headers = [
            ("From", f"{sender[0]} <{sender[1]}>"),
            ("To", ", ".join(f"{n} <{a}>" for n, a in recipients)),
            ("Subject", subject if i == 0 else f"Re: {subject}"),
            ("Date", format_datetime(date)),
            ("Message-ID", mid),
        ]
        if references:
            headers += [("In-Reply-To", references[-1]), ("References", " ".join(references))]
        references.append(mid)
        mailboxes = [rep]
        if kind == "internal":
            mailboxes = [r for r in {rep, recipients[0][1]} if r in self.reps]
        return SeedMessage(
            mailboxes,
            headers,
            date,
            rep if outbound else None,
            f"message {i + 1} about {subject.lower()}",
        )


def _kinds(rng: random.Random) -> Iterator[str]:
    names = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    yield from names  # each kind at least once
    while True:
        yield rng.choices(names, weights)[0]


def generate_team(
    *,
    messages: int = 2400,
    seed: int = 7,
    domain: str = "acme.example",
    reps: tuple[str, ...] = ("alice", "bob"),
    now: datetime | None = None,
    days: int = 120,
) -> Team:
    """About `messages` messages in threads of 1-6 (3 on average) over the last `days` days."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC).replace(microsecond=0)
    rep_addresses = [f"{r}@{domain}" for r in reps]
    gen = _Gen(rng, domain, rep_addresses, now - timedelta(days=days), now - timedelta(hours=2))
    threads: list[SeedThread] = []
    total = 0
    for kind in _kinds(rng):
        if total >= messages:
            break
        size = max(1, min(6, round(rng.triangular(1, 6, 2.5))))
        if kind == "won_midway":
            size = max(size, 3)
        size = min(size, max(1, messages - total))
        thread = gen.thread(kind, size)
        threads.append(thread)
        total += len(thread.messages)
    return Team(domain, rep_addresses, gen.persons, gen.items, threads)


def odd_messages(team: Team, rep: str, now: datetime) -> list[SeedThread]:
    """Malformed and extreme headers, one thread each: none may stop a round."""
    customer = next(p for p in team.persons if p.known)
    rng = random.Random(99)
    date = now - timedelta(days=3)

    def msg(headers: list[tuple[str, str]]) -> SeedThread:
        return SeedThread("odd", [SeedMessage([rep], headers, date, None)])

    mid = f"<odd-{rng.getrandbits(32)}@{team.domain}>"
    many = ", ".join(f"guest{i}@crowd.example" for i in range(500))
    return [
        msg([("To", rep), ("Subject", "no sender"), ("Message-ID", f"<nofrom@{team.domain}>")]),
        msg([("From", customer.email), ("To", rep), ("Subject", "no date header")]),
        msg(
            [
                ("From", f"=?utf-8?b?{_b64('Zoë Ünal')}?= <{customer.email}>"),
                ("To", rep),
                ("Subject", "=?utf-8?q?Caf=C3=A9_order?="),
            ]
        ),
        msg(
            [
                ("From", customer.email),
                ("To", f"Customers: {rep}, a@crowd.example;"),
                ("Cc", "undisclosed-recipients:;"),
            ]
        ),
        msg([("From", "josé@bücher.example"), ("To", rep), ("Subject", "IDN domain")]),
        msg([("From", customer.email), ("To", many), ("Subject", "500 recipients")]),
        msg([("From", "not an address"), ("To", rep), ("Subject", "unparsable from")]),
        msg(
            [("From", customer.email), ("To", rep), ("Subject", "first copy"), ("Message-ID", mid)]
        ),
        msg(
            [
                ("From", customer.email),
                ("To", rep),
                ("Subject", "same Message-ID again"),
                ("Message-ID", mid),
            ]
        ),
        msg(
            [
                ("From", customer.email),
                ("To", rep),
                ("Subject", "huge header"),
                ("References", "<r@x> " * 350_000),
            ]
        ),
    ]


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def load_team(
    team: Team,
    google: Any,
    pipedrive: Any,
    *,
    extra_threads: Sequence[SeedThread] = (),
    microsoft: Any = None,
    outlook: Sequence[str] = (),
) -> TeamMail:
    """Put the team into the sandboxes: persons and items into the CRM (`pipedrive`: the Pipedrive
    sandbox, or the HubSpot one, which takes the same `add_*` calls), each rep's mail into Gmail
    or (reps in `outlook`) Microsoft 365. Returns where the mail went, for later replies."""
    for person in team.persons:
        if person.known and person.crm_id is None:
            person.crm_id = pipedrive.add_person(person.name, [person.email])
    for item in team.items:
        if item.crm_id is not None or item.person.crm_id is None:
            continue
        if item.kind == "deal":
            item.crm_id = pipedrive.add_deal(
                item.title,
                item.person.crm_id,
                add_time=item.created,
                status=item.status,
                close_time=item.closed,
            )
        elif item.kind == "lead":
            item.crm_id = pipedrive.add_lead(
                item.title,
                item.person.crm_id,
                add_time=item.created,
                archived=item.status == "archived",
                archived_at=item.closed,
            )
        else:
            item.crm_id = pipedrive.add_project(
                item.title, item.person.crm_id, add_time=item.created
            )
    mail = TeamMail(google, microsoft, outlook)
    for rep in team.reps:
        mail.add_mailbox(rep)
    for index, thread in enumerate([*team.threads, *extra_threads]):
        mail.add(index, thread.messages)
    return mail


class TeamMail:
    """Where each rep's mail lives: Gmail, or Microsoft 365 for the reps in `outlook`.

    Keeps each seeded thread's Gmail thread id per mailbox, so later replies join their thread.
    """

    def __init__(self, google: Any, microsoft: Any = None, outlook: Sequence[str] = ()):
        self.google = google
        self.microsoft = microsoft
        self.outlook = set(outlook)
        self.thread_ids: dict[tuple[int, str], str] = {}

    def add_mailbox(self, rep: str) -> None:
        if rep in self.outlook:
            self.microsoft.add_mailbox(rep, rep.split("@")[0].title())
        else:
            self.google.add_mailbox(rep)

    def add(self, index: int, messages: Sequence[SeedMessage]) -> None:
        """Messages of the seeded thread number `index`, into every mailbox that holds them."""
        if self.microsoft is not None and self.outlook:
            self.microsoft.add_seed_thread(index, messages)
        for message in messages:
            for mailbox in message.mailboxes:
                if mailbox in self.outlook:
                    continue
                labels = ("SENT",) if message.sent_by == mailbox else ("INBOX",)
                gmail_id = self.google.add_message(
                    mailbox,
                    headers=message.headers,
                    internal_date=message.date,
                    thread_id=self.thread_ids.get((index, mailbox)),
                    label_ids=labels,
                    snippet=message.snippet,
                )
                self.thread_ids.setdefault((index, mailbox), gmail_id)
