"""Gmail watches kept by maillink against the Google sandbox: made for every active mailbox,
renewed a day later (well before their 7 days), stopped on pause and removal, shown by
`maillink accounts`."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.e2e.support import REP, connect
from tests.push.conftest import T0, TOPIC, Clock

from maillink.app import App
from maillink.cli import cli
from maillink.config import load_settings
from maillink.errors import ConfigError
from maillink.providers.gmail_api import api_description
from maillink.push.gmail_watch import RENEW_EVERY, RETRY_AFTER, GmailWatches
from maillink.sandbox.google import GoogleSandbox
from maillink.store import Store, accounts, push
from maillink.store.push import Subscription

OTHER = "bob@acme.example"
WATCHED = (push.MAILBOX,)


def _watch(app: App, email: str = REP) -> Subscription:
    with app.store.engine.connect() as conn:
        account = accounts.get(conn, email)
        assert account is not None
        (row,) = push.for_account(conn, account.id, push.GMAIL_WATCH)
    return row


def _accounts(config: Path) -> dict[str, str]:
    ran = CliRunner().invoke(cli, ["--config", str(config), "accounts", "--json"])
    assert ran.exit_code == 0, ran.output
    return {row["email"]: row["push"] for row in json.loads(ran.output)}


def _watch_calls(google: GoogleSandbox) -> int:
    return google.meter.requests["gmail.users.watch"]


@pytest.fixture
def team(app: App, google: GoogleSandbox, clock: Clock) -> GmailWatches:
    google.push.create_topic(TOPIC)
    for email in (REP, OTHER):
        google.add_mailbox(email)
        connect(app, google, email)
    return GmailWatches(app, TOPIC, clock=clock)


def test_the_trimmed_gmail_description_keeps_watch_and_stop() -> None:
    description = api_description()
    assert {"getProfile", "watch", "stop"} <= description["resources"]["users"]["methods"].keys()
    assert {"WatchRequest", "WatchResponse"} <= description["schemas"].keys()


def test_every_active_mailbox_gets_a_watch_on_inbox_and_sent(
    team: GmailWatches, app: App, google: GoogleSandbox, config: Path
) -> None:
    assert _accounts(config) == {REP: "pending", OTHER: "pending"}
    result = team.check()
    assert (result.watched, result.failed) == (2, 0)
    for email in (REP, OTHER):
        watch = google.push.watch_of(email)
        assert watch is not None
        assert (watch.topic, watch.label_ids, watch.behavior) == (
            TOPIC,
            ("INBOX", "SENT"),
            "include",
        )
        row = _watch(app, email)
        assert row.state == push.ACTIVE_WATCH and row.external_id == TOPIC
        assert row.expires_at == T0 + timedelta(days=7)
        assert row.renew_at == T0 + RENEW_EVERY
        assert row.history_id == str(google.history_id(email))
    assert _accounts(config) == {
        REP: "watching until 2026-03-09 09:00 UTC",
        OTHER: "watching until 2026-03-09 09:00 UTC",
    }


def test_a_watch_is_renewed_a_day_later_long_before_it_expires(
    team: GmailWatches, app: App, google: GoogleSandbox, clock: Clock
) -> None:
    team.check()
    assert _watch_calls(google) == 2
    clock.advance(RENEW_EVERY - timedelta(minutes=1))
    assert team.check().watched == 0  # not due yet: nothing sent to Gmail
    assert _watch_calls(google) == 2
    clock.advance(timedelta(minutes=2))
    assert team.check().watched == 2
    assert _watch_calls(google) == 4
    row = _watch(app)
    assert row.expires_at == clock.at + timedelta(days=7)
    assert row.renew_at == clock.at + RENEW_EVERY


def test_a_new_topic_makes_every_watch_again(
    team: GmailWatches, app: App, google: GoogleSandbox, clock: Clock
) -> None:
    team.check()
    assert _watch(app).target == TOPIC
    moved = "projects/acme-mail/topics/other"
    google.push.create_topic(moved)
    clock.advance(timedelta(hours=1))  # long before the renewal: the new topic alone makes it due
    keeper = GmailWatches(app, moved, clock=clock)
    assert keeper.check().watched == 2
    watch = google.push.watch_of(REP)
    assert watch is not None and watch.topic == moved
    assert google.meter.requests["gmail.users.stop"] == 0  # a watch replaces the previous one
    row = _watch(app)
    assert (row.state, row.target, row.external_id) == (push.ACTIVE_WATCH, moved, moved)
    assert keeper.check().watched == 0  # pointed where configured: nothing due


def test_a_due_watch_is_claimed_by_one_daemon_only(store: Store) -> None:
    with store.transaction() as conn:
        account = accounts.upsert(conn, REP, "gmail", "t", "s")
        push.ensure(conn, push.GMAIL_WATCH, WATCHED, T0)
        push.ensure(conn, push.GMAIL_WATCH, WATCHED, T0)  # a second daemon's check adds nothing
        (first,) = push.due(conn, push.GMAIL_WATCH, T0, WATCHED, TOPIC)
        (second,) = push.due(conn, push.GMAIL_WATCH, T0, WATCHED, TOPIC)  # both daemons saw it due
    assert first.account_id == account.id
    with store.transaction() as conn:
        assert push.claim(conn, first, T0 + timedelta(minutes=5), T0)
    with store.transaction() as conn:
        assert not push.claim(conn, second, T0 + timedelta(minutes=5), T0)
        assert push.due(conn, push.GMAIL_WATCH, T0 + timedelta(minutes=1), WATCHED, TOPIC) == []


def test_a_refused_watch_is_shown_failed_and_tried_again_later(
    app: App, google: GoogleSandbox, clock: Clock, config: Path
) -> None:
    google.add_mailbox(REP)
    connect(app, google, REP)
    watches = GmailWatches(app, TOPIC, clock=clock)  # the topic does not exist at Google
    assert watches.check().failed == 1
    row = _watch(app)
    assert row.state == push.FAILED and row.renew_at == T0 + RETRY_AFTER
    assert _accounts(config)[REP].startswith("failed: ")
    assert "Resource not found" in _accounts(config)[REP]
    assert watches.check().failed == 0  # not again before RETRY_AFTER
    google.push.create_topic(TOPIC)
    clock.advance(RETRY_AFTER)
    assert watches.check().watched == 1
    assert _watch(app).state == push.ACTIVE_WATCH


def test_pausing_a_mailbox_stops_its_watch_and_resuming_watches_again(
    team: GmailWatches, app: App, google: GoogleSandbox, config: Path
) -> None:
    team.check()
    ran = CliRunner().invoke(cli, ["--config", str(config), "accounts", "pause", REP])
    assert ran.exit_code == 0, ran.output
    assert google.push.watch_of(REP) is None
    assert google.meter.requests["gmail.users.stop"] == 1
    assert _watch(app).state == push.STOPPED
    assert _accounts(config)[REP] == "off"
    assert team.check().watched == 0  # a paused mailbox is not watched
    CliRunner().invoke(cli, ["--config", str(config), "accounts", "resume", REP])
    assert team.check().watched == 1
    assert google.push.watch_of(REP) is not None


def test_removing_a_mailbox_stops_its_watch_before_its_tokens_are_forgotten(
    team: GmailWatches, app: App, google: GoogleSandbox, config: Path
) -> None:
    team.check()
    ran = CliRunner().invoke(cli, ["--config", str(config), "accounts", "remove", REP])
    assert ran.exit_code == 0, ran.output
    assert google.push.watch_of(REP) is None
    assert google.push.watch_of(OTHER) is not None
    assert REP not in _accounts(config)


def test_a_mailbox_paused_elsewhere_has_its_watch_stopped_by_the_daemons_check(
    team: GmailWatches, app: App, google: GoogleSandbox
) -> None:
    team.check()
    with app.store.transaction() as conn:
        account = accounts.get(conn, OTHER)
        assert account is not None
        accounts.set_status(conn, account.id, accounts.PAUSED)
    assert team.check().stopped == 1
    assert google.push.watch_of(OTHER) is None and google.push.watch_of(REP) is not None


def test_turning_push_off_stops_the_watches(
    team: GmailWatches, app: App, google: GoogleSandbox, clock: Clock, config: Path
) -> None:
    team.check()
    assert GmailWatches(app, None, clock=clock).check().stopped == 2
    assert google.push.watch_of(REP) is None and google.push.watch_of(OTHER) is None
    assert _watch(app).state == push.STOPPED


def test_a_push_topic_must_be_a_pubsub_topic_name(tmp_path: Path, config: Path) -> None:
    assert load_settings(config).gmail.push_topic == TOPIC
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace(TOPIC, "gmail-push"))
    with pytest.raises(ConfigError, match=r"\[gmail\] push_topic .*projects/PROJECT/topics"):
        load_settings(bad)


def test_the_daemon_keeps_the_watches_from_its_loop(
    team: GmailWatches, app: App, google: GoogleSandbox, clock: Clock, config: Path
) -> None:
    from maillink.daemon.loop import Daemon

    daemon = Daemon(app, should_stop=lambda: True, clock=clock)
    assert daemon.watches.topic == TOPIC
    daemon.watches.tick()
    daemon.watches.join(timeout=30)
    assert google.push.watch_of(REP) is not None and google.push.watch_of(OTHER) is not None
    listed = CliRunner().invoke(cli, ["--config", str(config), "accounts"])
    assert f"{REP}" in listed.output
    assert "push: watching until 2026-03-09 09:00 UTC" in listed.output


def test_one_check_watches_every_mailbox_batch_after_batch(
    team: GmailWatches, google: GoogleSandbox
) -> None:
    team.batch = 1
    assert team.check().watched == 2
    assert _watch_calls(google) == 2


def test_watch_and_stop_go_through_the_mailboxs_gmail_api_at_their_quota_cost(
    team: GmailWatches, app: App, google: GoogleSandbox
) -> None:
    from maillink.push.gmail_watch import watch_api

    api = watch_api(app, app.account(REP))
    answer = api.watch(TOPIC)
    assert int(answer["expiration"]) > 0 and answer["historyId"]
    api.stop()
    assert google.push.watch_of(REP) is None
    assert api.api.quota_units == 100 + 50  # users.watch, users.stop: Gmail's units
    assert (
        google.meter.requests["gmail.users.watch"] == google.meter.requests["gmail.users.stop"] == 1
    )
