"""A realistic team mailbox for the benchmark, loaded straight into the sandboxes.

One rep's mailbox of about `messages` emails in threads of 1 to 6 (about 3 on average) over the
last year. A team mails the same customers again and again: each customer thread picks a
customer from a pool (some customers far more often than others), so that there is one distinct
external address for about `messages_per_contact` messages. Most customers are CRM persons
(`known_share`) with the deals, leads and projects a sales CRM holds; the rest of the mail is
internal, automated notifications (blocked), and one-off cold contacts nobody knows.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

DOMAIN = "acme.example"
COLLEAGUES = tuple(f"{name}@{DOMAIN}" for name in ("bob", "carla", "dev", "elif", "ops"))
COMPANIES = (
    "acorn", "birch", "cedar", "delta", "ember", "fjord", "granite", "harbor", "indigo",
    "juniper", "kestrel", "lumen", "meridian", "nimbus", "orchid", "pylon", "quartz", "rivet",
)  # fmt: skip
SUBJECTS = (
    "Quote for the new licences", "Follow-up on our call", "Renewal terms", "Onboarding plan",
    "Pricing question", "Contract draft v2", "Demo next week?", "Invoice 2291", "Next steps",
)  # fmt: skip
SIZES = ((1, 0.20), (2, 0.25), (3, 0.20), (4, 0.15), (5, 0.12), (6, 0.08))  # mean 2.98
KINDS = (("customer", 0.80), ("internal", 0.08), ("notification", 0.06), ("cold", 0.06))
DAYS = 365


@dataclass
class Customer:
    email: str
    name: str
    weight: float
    person_id: int | None = None  # set when the customer is a CRM person


@dataclass
class Generated:
    rep: str
    messages: int
    threads: int
    customers: int
    known_persons: int
    items: int
    external_addresses: int  # distinct external addresses in the mailbox (customers, cold)

    def describe(self) -> str:
        return (
            f"{self.messages} messages in {self.threads} threads "
            f"({self.messages / max(self.threads, 1):.2f} a thread); "
            f"{self.external_addresses} distinct external addresses "
            f"(one per {self.messages / max(self.external_addresses, 1):.1f} messages), "
            f"{self.known_persons} of them CRM persons with {self.items} deals/leads/projects"
        )


def _pick(rng: random.Random, table: tuple[tuple[Any, float], ...]) -> Any:
    values = [v for v, _ in table]
    return rng.choices(values, [w for _, w in table])[0]


def generate_mailbox(
    google: Any,
    pipedrive: Any,
    *,
    messages: int = 100_000,
    rep: str = f"alice@{DOMAIN}",
    seed: int = 1,
    messages_per_contact: float = 20.0,
    known_share: float = 0.8,
    now: datetime | None = None,
) -> Generated:
    """Seed `google` (one mailbox, `rep`) and `pipedrive` (persons, items); returns the figures."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    start, end = now - timedelta(days=DAYS), now - timedelta(hours=2)
    span = (end - start).total_seconds()
    threads_expected = messages / 2.98
    cold_expected = threads_expected * dict(KINDS)["cold"]
    pool = max(10, round(messages / messages_per_contact - cold_expected))
    customers = []
    for i in range(pool):
        company = COMPANIES[i % len(COMPANIES)]
        customers.append(
            Customer(
                f"contact{i}@{company}{i // 500}.example", f"Contact {i}", rng.paretovariate(3)
            )
        )
    weights = [c.weight for c in customers]
    known = items = 0
    for customer in customers:
        if rng.random() >= known_share:
            continue
        customer.person_id = pipedrive.add_person(customer.name, [customer.email])
        known += 1
        items += _items(rng, pipedrive, customer, start, span)

    google.add_mailbox(rep)
    used: set[str] = set()
    total = threads = cold = 0
    while total < messages:
        size = min(_pick(rng, SIZES), messages - total)
        kind = _pick(rng, KINDS)
        if kind == "customer":
            parties = [rng.choices(customers, weights)[0]]
            if rng.random() < 0.12:
                parties.append(rng.choices(customers, weights)[0])
            addresses = [(c.name, c.email) for c in parties]
        elif kind == "internal":
            addresses = [("Colleague", rng.choice(COLLEAGUES))]
        elif kind == "notification":
            addresses = [("Alerts", f"noreply@notifications.{rng.choice(COMPANIES)}.example")]
        else:
            cold += 1
            addresses = [(f"Prospect {cold}", f"prospect{cold}@cold{cold % 97}.example")]
        if kind in ("customer", "cold"):
            used.update(email for _, email in addresses)
        first = start + timedelta(seconds=rng.uniform(0, span * 0.97))
        _thread(google, rng, rep, kind, addresses, first, size, end)
        total += size
        threads += 1
    return Generated(rep, total, threads, pool, known, items, len(used))


def _items(
    rng: random.Random, pipedrive: Any, customer: Customer, start: datetime, span: float
) -> int:
    """The customer's deals, leads and projects: most have one open deal, some several items."""
    pid = customer.person_id
    assert pid is not None
    count = 0
    roll = rng.random()
    created = start - timedelta(days=60) + timedelta(seconds=rng.uniform(0, span * 0.9))
    if roll < 0.55:
        pipedrive.add_deal(f"{customer.name} deal", pid, add_time=created)
        count += 1
    elif roll < 0.70:
        closed = created + timedelta(days=rng.uniform(5, 90))
        status = rng.choice(["won", "lost"])
        pipedrive.add_deal(
            f"{customer.name} deal", pid, add_time=created, status=status, close_time=closed
        )
        count += 1
    if rng.random() < 0.10:
        pipedrive.add_lead(f"{customer.name} lead", pid, add_time=created + timedelta(days=3))
        count += 1
    if rng.random() < 0.04:
        pipedrive.add_project(f"{customer.name} project", pid, add_time=created)
        count += 1
    return count


def _thread(
    google: Any,
    rng: random.Random,
    rep: str,
    kind: str,
    parties: list[tuple[str, str]],
    first: datetime,
    size: int,
    end: datetime,
) -> None:
    subject = rng.choice(SUBJECTS)
    thread_id: str | None = None
    references: list[str] = []
    date = first
    for i in range(size):
        outbound = kind != "notification" and rng.random() < 0.5
        if outbound:
            sender, recipients = ("Alice", rep), parties
        else:
            sender, recipients = parties[0], [("Alice", rep), *parties[1:]]
        mid = f"<{uuid.UUID(int=rng.getrandbits(128))}@mail.{DOMAIN}>"
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
        added = google.add_message(
            rep,
            headers=headers,
            internal_date=date,
            thread_id=thread_id,
            label_ids=("SENT",) if outbound else ("INBOX",),
            snippet=f"message {i + 1} about {subject.lower()}",
        )
        thread_id = thread_id or added
        date = min(end, date + timedelta(hours=rng.uniform(1, 72)))
