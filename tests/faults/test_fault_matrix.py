"""The fault matrix: each failure the providers and Pipedrive can answer with, injected into a real
backfill or sync round against the sandboxes. After each: nothing lost, nothing duplicated, and
the mailbox in the right state (active and caught up, or needs_reauth without touching others).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials
from tests.e2e.support import NOW, connect
from tests.faults.support import check_invariants, workspace

from maillink.app import GMAIL_SCOPE, App
from maillink.config import load_settings
from maillink.daemon import sync_round
from maillink.outbox import Outbox, pending_count
from maillink.providers.gmail import GmailProvider
from maillink.providers.retry import RetryPolicy
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.google.errors import rate_limited
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.seed import SeedMessage, Team, TeamMail, generate_team, load_team
from maillink.store import accounts
from maillink.sync import RoundResult

ALICE = "alice@acme.example"
BOB = "bob@acme.example"
QUICK = RetryPolicy(backoff=0.05, max_backoff=0.2)


@dataclass
class World:
    google: GoogleSandbox
    pipedrive: PipedriveSandbox
    app: App
    team: Team
    mail: TeamMail

    def account(self, email: str) -> accounts.Account:
        return self.app.account(email)

    def backfill(self, email: str, **provider: Any) -> RoundResult:
        account = self.account(email)
        gmail = self.gmail(account, **provider) if provider else self.app.provider_for(account)
        return self.app.syncer().backfill(account, gmail)

    def backfill_all(self) -> list[RoundResult]:
        return [self.backfill(email) for email in self.team.reps]

    def gmail(self, account: accounts.Account, **overrides: Any) -> GmailProvider:
        """The mailbox's Gmail adapter as the App builds it, with some options changed."""
        client = self.app.credentials.google_client()
        tokens = self.app.tokens(account)
        credentials = Credentials(
            None,
            refresh_token=tokens["refresh_token"],
            client_id=client["client_id"],
            client_secret=client["client_secret"],
            token_uri=client["token_uri"],
            scopes=[GMAIL_SCOPE],
        )
        options: dict[str, Any] = {
            "api_endpoint": self.google.api_endpoint,
            "policy": QUICK,
            "page_size": self.app.settings.sync.page_size,
        }
        options.update(overrides)
        return GmailProvider(account.email, credentials, **options)

    def reply(self, count: int = 3) -> None:
        """New replies arrive in the first threads that hold external mail."""
        added = 0
        for index, thread in enumerate(self.team.threads):
            if thread.kind not in ("single", "multi", "project") or added == count:
                continue
            last = thread.messages[-1]
            when = NOW - timedelta(minutes=10 + added)
            headers = [(k, v) for k, v in last.headers if k not in ("Message-ID", "Date")]
            headers += [("Message-ID", f"<late-{index}-{added}@mail.example>")]
            self.mail.add(index, [SeedMessage(last.mailboxes, headers, when, last.sent_by)])
            added += 1

    def check(self) -> None:
        check_invariants(self.app.store, self.google, self.pipedrive)
        for email in self.team.reps:
            account = self.account(email)
            assert account.status == accounts.ACTIVE, (email, account.status)
            assert account.last_error is None, (email, account.last_error)


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    options = getattr(request, "param", {})
    with GoogleSandbox() as google, PipedriveSandbox(**options) as pipedrive:
        team = generate_team(messages=70, seed=11, now=NOW)
        mail = load_team(team, google, pipedrive)
        app = App(load_settings(workspace(tmp_path, google, pipedrive, team.domain, page_size=25)))
        app.provider_for  # noqa: B018 - the App is complete before faults are added
        for rep in team.reps:
            connect(app, google, rep)
        yield World(google, pipedrive, app, team, mail)
        app.close()


def later(world: World, hours: float = 2) -> Outbox:
    """The outbox as it runs `hours` from now, when every backoff and parking is over."""
    moment = datetime.now(UTC) + timedelta(hours=hours)
    return Outbox(world.app.store, world.app.crm, clock=lambda: moment)


def google_error(code: int, reason: str) -> str:
    return json.dumps({"error": {"code": code, "message": reason, "errors": [{"reason": reason}]}})


# --- Gmail ------------------------------------------------------------------------------------


def test_gmail_429_with_retry_after_is_waited_out(world: World) -> None:
    throttled = Fault(
        path=r"/threads/",
        status=429,
        headers={"Retry-After": "1"},
        body=json.dumps(rate_limited(1).body()),
        times=3,
    )
    world.google.faults.add(throttled)
    assert all(r.error is None for r in world.backfill_all())
    assert world.google.meter.statuses[429] == 3
    world.check()


def test_gmail_429_without_retry_after_backs_off(world: World) -> None:
    world.google.faults.add(
        Fault(path=r"/messages$", status=429, body=google_error(429, "rateLimitExceeded"), times=2)
    )
    assert world.backfill(ALICE, policy=QUICK).error is None
    assert world.backfill(BOB).error is None
    assert world.google.meter.statuses[429] == 2
    world.check()


@pytest.mark.parametrize("status", [500, 503])
def test_gmail_5xx_is_retried(world: World, status: int) -> None:
    world.google.faults.add(
        Fault(path=r"/batch", status=status, body=google_error(status, "backendError"), times=2)
    )
    world.google.faults.add(
        Fault(path=r"/threads/", status=status, body=google_error(status, "backendError"))
    )
    assert world.backfill(ALICE, policy=QUICK).error is None
    assert world.backfill(BOB).error is None
    world.check()


def test_gmail_connection_reset_is_retried(world: World) -> None:
    world.google.faults.add(Fault(path=r"/batch", action="reset", times=2))
    world.google.faults.add(Fault(path=r"/messages$", action="reset", after=1))
    assert world.backfill(ALICE, policy=QUICK).error is None
    assert world.backfill(BOB, policy=QUICK).error is None
    world.check()


def test_gmail_read_timeout_is_retried(world: World) -> None:
    world.google.faults.add(Fault(path=r"/messages$", action="delay", seconds=1.5))
    world.google.faults.add(Fault(path=r"/batch", action="delay", seconds=1.5))
    retries: list[float] = []  # the backoffs before each retry: one per request given up on

    def sleep(seconds: float) -> None:
        retries.append(seconds)
        time.sleep(seconds)

    quick = RetryPolicy(backoff=QUICK.backoff, max_backoff=QUICK.max_backoff, sleep=sleep)
    assert world.backfill(ALICE, policy=quick, http_timeout=0.5).error is None
    assert world.backfill(BOB).error is None
    assert len(retries) >= 2  # both slow answers were given up on at 0.5 s, not waited for
    world.check()


def test_gmail_truncated_json_is_retried_not_taken_as_an_empty_answer(world: World) -> None:
    # A listing page cut short must not end the listing; a thread cut short must not drop it.
    world.google.faults.add(
        Fault(path=r"/messages$", status=200, body='{"messages": [{"id": "18c0', after=1)
    )
    world.google.faults.add(Fault(path=r"/threads/", status=200, body='{"id": "18c0', times=2))
    assert world.backfill(ALICE, policy=QUICK).error is None
    assert world.backfill(BOB, policy=QUICK).error is None
    world.check()


def test_gmail_truncated_json_that_persists_fails_the_round_and_loses_nothing(
    world: World,
) -> None:
    world.google.faults.add(
        Fault(path=r"/messages$", status=200, body='{"messages": [', after=1, times=10)
    )
    result = world.backfill(ALICE, policy=QUICK)
    assert result.error is not None and "not a JSON object" in result.error
    assert world.account(ALICE).status == accounts.ACTIVE
    world.google.faults.clear()
    assert world.backfill(ALICE).error is None  # resumes from the last committed page
    assert world.backfill(BOB).error is None
    world.check()


def test_gmail_404_on_history_resyncs_the_mailbox_without_duplicates(world: World) -> None:
    world.backfill_all()
    world.reply(4)
    for rep in world.team.reps:
        world.google.expire_history(rep)
    results = sync_round(world.app)
    assert [r.error for r in results] == [None, None]
    assert world.google.meter.statuses[404] >= 2
    world.check()


def test_invalid_grant_marks_that_mailbox_only_and_it_resumes_once_reconnected(
    world: World,
) -> None:
    world.backfill_all()
    world.reply(6)
    world.google.revoke(BOB)
    results = {r.account: r for r in sync_round(world.app)}
    assert results[ALICE].error is None
    assert results[BOB].status == accounts.NEEDS_REAUTH
    assert world.account(BOB).status == accounts.NEEDS_REAUTH
    assert world.account(ALICE).status == accounts.ACTIVE
    connect(world.app, world.google, BOB)  # the rep connects the mailbox again
    results = {r.account: r for r in sync_round(world.app)}
    assert results[BOB].error is None
    world.check()


# --- Pipedrive --------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [{"daily_token_budget": 900}], indirect=True)
def test_pipedrive_daily_budget_spent_parks_crm_work_and_mail_keeps_syncing(
    world: World,
) -> None:
    results = world.backfill_all()
    assert world.pipedrive.meter.statuses[429] >= 1
    assert any(r.delivery.parked_until or r.undecided or r.error for r in results)
    with world.app.store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one()
        waiting = pending_count(conn)
    assert stored == sum(world.google.message_count(r) for r in world.team.reps)  # mail synced
    assert waiting > 0 or any(r.undecided for r in results)
    assert all(world.account(r).status == accounts.ACTIVE for r in world.team.reps)

    world.pipedrive.reset_daily_budget()  # the next day
    world.pipedrive.daily_token_budget = None
    with world.app.store.transaction() as conn:
        conn.exec_driver_sql("DELETE FROM crm_state WHERE name = 'outbox_parked_until'")
    assert all(r.error is None for r in sync_round(world.app))
    later(world).deliver()
    world.check()


@pytest.mark.parametrize("world", [{"burst_per_2s": 30}], indirect=True)
def test_pipedrive_burst_429_waits_for_the_reset(world: World) -> None:
    assert all(r.error is None and not r.delivery.failed for r in world.backfill_all())
    assert world.pipedrive.meter.statuses[429] >= 1
    world.check()


def test_pipedrive_post_whose_answer_was_lost_is_found_not_created_again(world: World) -> None:
    world.pipedrive.lose_next_response(r"/api/v2/activities$", method="POST", times=3)
    world.backfill_all()
    with world.app.store.engine.connect() as conn:
        assert pending_count(conn) == 3  # created, but maillink does not know it yet
    delivery = later(world).deliver()
    assert (delivery.found_again, delivery.created) == (3, 0)
    world.check()


@pytest.mark.parametrize("status", [500, 503])
def test_pipedrive_5xx_on_a_create_is_looked_up_then_created_once(
    world: World, status: int
) -> None:
    world.pipedrive.faults.add(
        Fault(path=r"/api/v2/activities$", method="POST", status=status, times=2)
    )
    world.pipedrive.faults.add(Fault(path=r"/persons/search", status=status, times=2))
    world.backfill_all()
    delivery = later(world).deliver()
    assert (delivery.found_again, delivery.created) == (0, 2)
    world.check()


def test_pipedrive_connection_reset_and_truncated_json_on_reads_are_retried(
    world: World,
) -> None:
    world.pipedrive.faults.add(Fault(path=r"/persons/search", action="reset", times=2))
    world.pipedrive.faults.add(
        Fault(path=r"/api/v2/deals", status=200, body='{"success": true, "data": [{"id"', times=2)
    )
    assert all(r.error is None and not r.undecided for r in world.backfill_all())
    world.check()


# --- Microsoft Graph ----------------------------------------------------------------------------


def test_graph_410_restarts_the_folder_without_duplicates(tmp_path: Path) -> None:
    from maillink.providers.graph import GraphProvider
    from maillink.sandbox.microsoft import MicrosoftSandbox

    carol = "carol@acme.example"
    ann = "ann@customer.example"
    with (
        GoogleSandbox() as google,
        PipedriveSandbox() as pipedrive,
        MicrosoftSandbox() as microsoft,
    ):
        microsoft.add_mailbox(carol, "Carol")
        person = pipedrive.add_person("Ann", [ann])
        pipedrive.add_deal("Licences", person, add_time=NOW - timedelta(days=60))

        def arrive(n: int) -> None:
            microsoft.add_message(
                carol,
                "inbox",
                internet_message_id=f"<graph-{n}@mail.example>",
                subject=f"Quote {n}",
                sender=ann,
                to=[carol],
                received=NOW - timedelta(days=30 - n),
            )

        for n in range(12):
            arrive(n)
        app = App(load_settings(workspace(tmp_path, google, pipedrive, "acme.example")))
        with app.store.transaction() as conn:
            account = accounts.upsert(conn, carol, "microsoft", "unused", "")
        token = microsoft.access_token(carol)

        def graph() -> GraphProvider:
            return GraphProvider(
                carol,
                lambda: token,
                graph_url=microsoft.graph_url,
                ca_bundle=microsoft.ca_bundle,
                page_size=5,
                policy=QUICK,
            )

        assert app.syncer().backfill(account, graph()).error is None
        for n in range(12, 15):
            arrive(n)
        microsoft.expire_delta(carol, "inbox")
        assert app.syncer().run(account, graph()).error is None
        assert microsoft.meter.statuses[410] == 1
        keys = [a["note"].rsplit("maillink-id: ", 1)[1] for a in pipedrive.activities()]
        assert sorted(keys) == sorted(f"graph-{n}@mail.example" for n in range(15))
        with app.store.engine.connect() as conn:
            assert pending_count(conn) == 0
            stored = conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one()
        assert stored == 15
        assert app.account(carol).status == accounts.ACTIVE
        app.close()
