"""Three daemons over thirty mailboxes on one PostgreSQL store: each email is processed once, no
mailbox is ever synced by two daemons at once, emails that reach several mailboxes never make a
round fail (nor its pages be fetched again), and a daemon killed mid-work hands its mailboxes over
to the others once its leases expire."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, create_engine, func, select
from tests.daemon.support import (
    DaemonProcess,
    Team,
    rep,
    start_daemon,
    wait_for,
    write_daemon_config,
)
from tests.e2e.support import DOMAIN, NOW, connect

from maillink.app import App
from maillink.config import load_settings
from maillink.outbox import pending_count
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.pipedrive.data import note_lines
from maillink.sandbox.workspace import write_workspace
from maillink.store.schema import accounts, leases, messages

MAILBOXES = 30
THREADS = 8  # per mailbox, of three messages each (some emails also reach a colleague)
SHARED = 2  # emails per mailbox that also reach the next two mailboxes
LEASE = 3
PAGE = 10  # messages a page: a mailbox's first sync takes a few pages, read ahead one by one


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    made = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield made
    made.dispose()


def _seed(team: Team) -> None:
    for i in range(MAILBOXES):
        team.add_mailbox(rep(i))
    for i in range(MAILBOXES):
        for t in range(THREADS):
            customer = team.customer(f"c{i}x{t}", deal=t % 2 == 0)
            start = NOW - timedelta(days=20, hours=t)
            first = team.send(rep(i), customer, start)
            for k in (1, 2):
                team.send(rep(i), customer, start + timedelta(hours=k), thread=first)
            team.threads[rep(i)].append((first, customer))
        if i % 6 == 0:  # the same email in two mailboxes: still one activity
            shared = team.customer(f"s{i}", deal=True)
            team.send(rep(i), shared, NOW - timedelta(days=3), also=(rep((i + 1) % MAILBOXES),))
        # The newest emails of every mailbox also reach its two neighbours: the daemons syncing
        # neighbours at the same moment write the same activity (and cache the same person).
        for k in range(SHARED):
            neighbours = (rep((i + 1) % MAILBOXES), rep((i + 2) % MAILBOXES))
            team.send(
                rep(i),
                team.customer(f"w{i}x{k}", deal=k == 0),
                NOW - timedelta(days=1, hours=k),
                also=neighbours,
            )


def _more_mail(team: Team, when: datetime) -> None:
    for i in range(MAILBOXES):
        first, customer = team.threads[rep(i)][0]
        team.send(rep(i), customer, when, thread=first, subject="Re: Quote")
        team.send(rep(i), team.customer(f"n{i}", deal=False), when, subject="New")


def _stored(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(accounts.c.email, func.count(messages.c.id))
            .select_from(accounts.outerjoin(messages, messages.c.account_id == accounts.c.id))
            .group_by(accounts.c.email)
        ).all()
    return {email: count for email, count in rows}


def _all_done(engine: Engine, team: Team, pipedrive: PipedriveSandbox) -> bool:
    if _stored(engine) != {box: len(keys) for box, keys in team.keys.items()}:
        return False
    with engine.connect() as conn:
        if pending_count(conn):
            return False
    return len(pipedrive.activities()) >= len(team.all_keys)


def _assert_each_email_once(engine: Engine, team: Team, pipedrive: PipedriveSandbox) -> None:
    with engine.connect() as conn:
        unique = conn.execute(
            select(func.count()).select_from(
                select(messages.c.account_id, messages.c.provider_id).distinct().subquery()
            )
        ).scalar_one()
        total = conn.execute(select(func.count()).select_from(messages)).scalar_one()
        undecided = conn.execute(
            select(func.count()).select_from(messages).where(messages.c.reason.is_(None))
        ).scalar_one()
    assert total == unique == sum(len(keys) for keys in team.keys.values())
    assert undecided == 0
    activities = pipedrive.activities()
    keys = Counter(
        line.removeprefix("maillink-id: ")
        for a in activities
        for line in note_lines(a.get("note") or "")
        if line.startswith("maillink-id: ")
    )
    assert len(activities) == len(team.all_keys)
    assert keys == Counter({key.strip("<>"): 1 for key in team.all_keys})
    some = sorted(team.all_keys)[::97]
    assert all(len(pipedrive.activities_with_key(k.strip("<>"))) == 1 for k in some)


def _assert_never_two_daemons_on_one_mailbox(google: GoogleSandbox) -> None:
    overlaps = {rep(i): google.max_concurrency(rep(i)) for i in range(MAILBOXES)}
    assert all(n >= 1 for n in overlaps.values()), overlaps  # every mailbox was synced
    assert max(overlaps.values()) == 1, overlaps


def _rounds_abandoned_for_a_conflict(daemons: list[DaemonProcess]) -> int:
    """Rounds a daemon gave up because a write collided with another daemon's: the line that
    says so, or else the round's summary naming the database's conflict error."""
    conflicts = ("IntegrityError", "UniqueViolation", "DeadlockDetected", "SerializationFailure")
    abandoned = 0
    for d in daemons:
        events = [json.loads(line) for line in d.stderr().splitlines() if line.startswith("{")]
        said = sum("lost a race" in e.get("message", "") for e in events)
        failed = sum(
            e.get("event") == "round" and any(c in str(e.get("error")) for c in conflicts)
            for e in events
        )
        abandoned += max(said, failed)
    return abandoned


def test_three_daemons_share_thirty_mailboxes_and_take_over_a_killed_ones(
    tmp_path: Path,
    pg_url: str,
    engine: Engine,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
) -> None:
    team = Team(google, pipedrive)
    _seed(team)
    config = write_workspace(
        tmp_path, google, pipedrive, internal_domains=[DOMAIN], store_url=pg_url
    )
    write_daemon_config(config, interval=1, lease=LEASE, workers=3, max_backoff=2, page_size=PAGE)
    app = App(load_settings(config, env={}))
    for i in range(MAILBOXES):
        connect(app, google, rep(i))
    app.close()
    # Every Gmail answer takes a little while: overlapping requests would show.
    google.faults.add(Fault(path="^/gmail/v1/users/", action="delay", seconds=0.01, times=10**9))

    daemons: list[DaemonProcess] = [
        start_daemon(config, tmp_path, f"d{n}", "--log-format", "json") for n in range(3)
    ]
    try:
        wait_for(lambda: _all_done(engine, team, pipedrive), 40, "the first sync of every mailbox")
        _assert_each_email_once(engine, team, pipedrive)
        _assert_never_two_daemons_on_one_mailbox(google)
        # Emails that reach several mailboxes made no round fail, nor any page be read again.
        abandoned = _rounds_abandoned_for_a_conflict(daemons)
        several, twice = google.fetched_by_several(), google.fetched_twice()
        # (rounds abandoned, messages fetched by two daemons, messages fetched twice at all)
        assert (abandoned, len(several), len(twice)) == (0, 0, 0), (several, twice)
        with engine.connect() as conn:
            generations = dict(conn.execute(select(leases.c.account_id, leases.c.generation)).all())
        assert len(generations) == MAILBOXES and min(generations.values()) >= 1

        health = requests.get(daemons[0].ops_url() + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = requests.get(daemons[1].ops_url() + "/metrics", timeout=10).text
        assert "maillink_messages_synced_total" in metrics
        assert 'maillink_api_requests_total{service="gmail",status="200"}' in metrics
        assert "maillink_outbox_pending 0.0" in metrics

        # Slow rounds now, so that each daemon always holds some mailboxes; new mail everywhere.
        google.faults.add(Fault(path="/history$", action="delay", seconds=0.4, times=10**9))
        _more_mail(team, NOW - timedelta(minutes=5))
        victim = daemons[0]

        def victim_leases() -> dict[int, datetime]:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(leases.c.account_id, leases.c.expires_at).where(
                        leases.c.owner.like(f"%-{victim.pid}-%")
                    )
                ).all()
            return {account_id: expires for account_id, expires in rows}

        held = wait_for(victim_leases, 20, "the victim holding a mailbox")
        now = datetime.now(UTC)
        killed_at = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as logs tell time
        victim.kill()
        # Frozen now: nobody renews them any more (and a daemon of the same host may take them
        # over at once: maillink.holders tells that their holder is gone).
        orphaned = victim_leases()

        def taken_over() -> bool:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(leases.c.account_id, leases.c.owner, leases.c.acquired_at).where(
                        leases.c.account_id.in_(orphaned)
                    )
                ).all()
            return all(owner is None or f"-{victim.pid}-" not in owner for _, owner, _ in rows)

        wait_for(taken_over, 20, "the others taking the killed daemon's mailboxes", every=0.05)
        wait_for(lambda: _all_done(engine, team, pipedrive), 40, "the new mail of every mailbox")
        _assert_each_email_once(engine, team, pipedrive)
        _assert_never_two_daemons_on_one_mailbox(google)
        takeovers = [
            json.loads(line)
            for d in daemons[1:]
            for line in d.stderr().splitlines()
            if line.startswith("{") and '"takeover"' in line and f"-{victim.pid}-" in line
        ]
        first: dict[int, datetime] = {}
        for event in takeovers:
            when = datetime.fromisoformat(event["time"])
            first[event["account_id"]] = min(when, first.get(event["account_id"], when))
        assert set(first) >= set(orphaned)
        # What it held when it died was never taken from it alive: not before its lease expired
        # or, on its own host where the others can tell that it is gone, before it was killed.
        died_holding = (set(held) | set(orphaned)) & set(first)
        assert died_holding
        for account_id in died_holding:
            assert first[account_id] >= killed_at, (account_id, first[account_id], killed_at)
        assert "ya29" not in "".join(d.stderr() for d in daemons)
        assert _rounds_abandoned_for_a_conflict(daemons) == 0
        # Read again only what the killed daemon had read and not yet committed.
        with engine.connect() as conn:
            emails = dict(conn.execute(select(accounts.c.id, accounts.c.email)).all())
        refetched = {box for box, _ in google.fetched_by_several()}
        assert refetched <= {emails[account_id] for account_id in first}, refetched

        for survivor in daemons[1:]:
            assert survivor.stop() == 0, survivor.stderr()[-3000:]
    finally:
        for d in daemons:
            d.kill()
