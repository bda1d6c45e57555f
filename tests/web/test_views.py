"""Mailboxes and waiting threads: a rep sees and acts on their own only; choices apply rule 5."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from tests.web.support import (
    ADMIN,
    ANN,
    BOB,
    Team,
    add_user,
    connect_via_web,
    csrf,
    sign_in,
    text,
    thread_id,
)

from maillink.app import App
from maillink.explain import explain
from maillink.store import accounts
from maillink.web.session_key import session_key

RENEWAL = "Renewal quote <b>2026</b>"
PRICING = "Pricing for Q3"


def _team_connected(web: Flask, app: App, team: Team) -> tuple[FlaskClient, FlaskClient]:
    """ann and bob, each signed in with their own mailbox connected and synced."""
    ann = sign_in(web, app, ANN)
    connect_via_web(ann, web, team.google, ANN)
    bob = sign_in(web, app, BOB)
    connect_via_web(bob, web, team.google, BOB)
    return ann, bob


def _activities(team: Team, subject_part: str) -> list[dict[str, Any]]:
    found = [a for a in team.pipedrive.activities() if subject_part in a["subject"]]
    assert found, subject_part
    return found


def _thread(app: App, tid: int) -> dict[str, Any]:
    with app.store.engine.connect() as conn:
        found = explain(conn, str(tid))
    assert found is not None
    return found


def test_a_rep_sees_only_their_mailboxes_and_an_admin_sees_all(
    web: Flask, app: App, team: Team
) -> None:
    ann, bob = _team_connected(web, app, team)
    page = text(ann.get("/mailboxes"))
    assert ANN in page and BOB not in page
    boss = sign_in(web, app, ADMIN, admin=True)
    page = text(boss.get("/mailboxes"))
    assert ANN in page and BOB in page and "Connected by" in page
    assert "Up to date" in page


def test_the_mailboxes_page_shows_status_counts_and_last_sync(
    web: Flask, app: App, team: Team
) -> None:
    ann, _bob = _team_connected(web, app, team)
    account = app.account(ANN)
    row = text(ann.get("/mailboxes")).split(f'data-mailbox="{account.id}"')[1].split("</tr>")[0]
    assert "Up to date" in row
    numbers = [cell.split("<")[0] for cell in row.split('class="num">')[1:]]
    assert numbers[:2] == ["3", "1"]  # messages, linked to an item
    assert ">1</a>" in row  # one thread waiting, linked to the waiting page
    with app.store.transaction() as conn:
        accounts.set_status(conn, account.id, accounts.PAUSED)
    assert "Paused" in text(ann.get("/mailboxes"))


def test_a_rep_cannot_see_or_act_on_another_reps_thread(web: Flask, app: App, team: Team) -> None:
    ann, bob = _team_connected(web, app, team)
    bobs_thread = thread_id(app, PRICING)
    bobs_account = app.account(BOB).id
    token = csrf(ann)
    assert PRICING not in text(ann.get("/waiting"))
    assert ann.get(f"/threads/{bobs_thread}").status_code == 403
    assert ann.get(f"/mailboxes/{bobs_account}").status_code == 403
    assert ann.get(f"/mailboxes/{bobs_account}/progress").status_code == 403
    before = team.pipedrive.activities()
    chosen = ann.post(
        f"/threads/{bobs_thread}/choose",
        data={"csrf_token": token, "item": f"deal:{team.deals['dave']}"},
    )
    assert chosen.status_code == 403
    assert ann.post(f"/threads/{bobs_thread}/unlink", data={"csrf_token": token}).status_code == 403
    after = _thread(app, bobs_thread)
    assert after["waiting"] and after["linked"] is None and after["choice"] is None
    assert team.pipedrive.activities() == before
    assert ann.get("/threads/999999").status_code == 404
    # bob, the owner, sees it
    assert PRICING in text(bob.get("/waiting"))
    assert bob.get(f"/threads/{bobs_thread}").status_code == 200


def test_an_admin_can_choose_for_any_reps_thread(web: Flask, app: App, team: Team) -> None:
    _team_connected(web, app, team)
    boss = sign_in(web, app, ADMIN, admin=True)
    page = text(boss.get("/waiting"))
    assert PRICING in page and "Renewal quote" in page
    bobs_thread = thread_id(app, PRICING)
    answer = boss.post(
        f"/threads/{bobs_thread}/choose",
        data={"csrf_token": csrf(boss), "item": f"deal:{team.deals['dave']}"},
    )
    assert answer.status_code == 303
    assert _thread(app, bobs_thread)["linked"] == f"deal:{team.deals['dave']}"


def test_the_waiting_page_shows_subject_participants_dates_and_candidates(
    web: Flask, app: App, team: Team
) -> None:
    ann, _bob = _team_connected(web, app, team)
    page = text(ann.get("/waiting"))
    assert "Renewal quote &lt;b&gt;2026&lt;/b&gt;" in page  # escaped, never markup
    assert "<b>2026</b>" not in page
    assert "carol@customer.example" in page and ANN in page
    assert "started " in page and "last " in page and "2 messages" in page
    assert "Customer renewal 2026" in page and "Customer: analytics upsell" in page
    assert f'value="deal:{team.deals["carol"]}"' in page
    assert f'value="lead:{team.leads["carol"]}"' in page
    assert "Link to another item" in page and "Unlink" in page


def test_choosing_a_candidate_links_the_threads_activities_at_once(
    web: Flask, app: App, team: Team
) -> None:
    ann, _bob = _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)
    deal = team.deals["carol"]
    assert all(a["deal_id"] is None for a in _activities(team, "Renewal quote"))
    answer = ann.post(
        f"/threads/{tid}/choose", data={"csrf_token": csrf(ann), "item": f"deal:{deal}"}
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/waiting"
    page = text(ann.get("/waiting"))
    assert f"linked to deal:{deal}: 2 message(s) linked" in page
    assert "No thread is waiting for your choice" in page
    assert [a["deal_id"] for a in _activities(team, "Renewal quote")] == [deal, deal]
    found = _thread(app, tid)
    assert found["linked"] == f"deal:{deal}" and found["link_source"] == "user"


def test_linking_to_another_item_and_unlinking(web: Flask, app: App, team: Team) -> None:
    ann, _bob = _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)
    lead = team.leads["carol"]
    answer = ann.post(
        f"/threads/{tid}/choose",
        data={"csrf_token": csrf(ann), "item": f" lead:{lead} ", "back": "thread"},
    )
    assert answer.headers["Location"] == f"/threads/{tid}"
    assert f"linked to lead:{lead}" in text(ann.get(f"/threads/{tid}"))
    assert [(a["lead_id"], a["deal_id"]) for a in _activities(team, "Renewal quote")] == [
        (lead, None),
        (lead, None),
    ]
    ann.post(f"/threads/{tid}/unlink", data={"csrf_token": csrf(ann), "back": "thread"})
    page = text(ann.get(f"/threads/{tid}"))
    assert "unlinked" in page and "persons only" in page
    assert all(
        a["lead_id"] is None and a["deal_id"] is None for a in _activities(team, "Renewal quote")
    )


def test_an_item_that_is_not_one_is_refused_with_a_message(
    web: Flask, app: App, team: Team
) -> None:
    ann, _bob = _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)
    answer = ann.post(
        f"/threads/{tid}/choose",
        data={"csrf_token": csrf(ann), "item": "invoice:7"},
        follow_redirects=True,
    )
    assert "the kind must be deal, lead or project" in text(answer)
    assert _thread(app, tid)["waiting"]


def test_no_token_or_secret_is_ever_rendered(web: Flask, app: App, team: Team) -> None:
    boss_token = add_user(app, ADMIN, admin=True)
    boss = web.test_client()
    boss.get(f"/signin?token={boss_token}")
    connect_via_web(boss, web, team.google, ANN)
    account = app.account(ANN)
    secrets = {
        "refresh token": app.tokens(account)["refresh_token"],
        "encrypted token": account.token,
        "encryption key": team.key,
        "session key": session_key(app.store, app.cipher),
        "client secret": team.google.client_secret,
        "pipedrive token": team.pipedrive.api_token,
        "sign-in token": boss_token,
    }
    tid = thread_id(app, RENEWAL)
    pages = [
        "/mailboxes",
        f"/mailboxes/{account.id}",
        f"/mailboxes/{account.id}/progress",
        "/waiting",
        f"/threads/{tid}",
        "/signin",
    ]
    for path in pages:
        body = text(boss.get(path))
        for name, value in secrets.items():
            assert value and value not in body, f"{name} rendered on {path}"


# -- issue 9 §5: ids out of range, and what "Link to another item" accepts ----------------------


@pytest.mark.parametrize("big", [2**31, 2**63, 2**64, 10**30])
def test_ids_out_of_range_are_404_in_every_route(web: Flask, app: App, big: int) -> None:
    client = sign_in(web, app, ADMIN, admin=True)
    token = csrf(client)
    for path in (f"/threads/{big}", f"/mailboxes/{big}", f"/mailboxes/{big}/progress"):
        assert client.get(path).status_code == 404, path
    for path in (f"/threads/{big}/choose", f"/threads/{big}/unlink"):
        answer = client.post(path, data={"csrf_token": token, "item": "deal:1"})
        assert answer.status_code == 404, path
        assert "There is nothing here" in text(answer)


@pytest.mark.parametrize(
    "item",
    [
        "deal:abc",
        "deal:-3",
        "deal:1e3",
        "deal:0",
        "deal:123456789012345678901234567890",
        "project:x1",
        "lead:12",
        "lead:not-a-uuid",
        "deal:<script>",
    ],
)
def test_an_ill_formed_item_id_is_refused_with_a_message(
    web: Flask, app: App, team: Team, item: str
) -> None:
    ann, _bob = _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)
    answer = ann.post(
        f"/threads/{tid}/choose",
        data={"csrf_token": csrf(ann), "item": item, "back": "thread"},
        follow_redirects=True,
    )
    assert answer.status_code == 200
    assert "is not an item" in text(answer)
    assert "<script>" not in text(answer)
    assert _thread(app, tid)["waiting"] and _thread(app, tid)["linked"] is None


def test_an_item_of_other_persons_is_refused_and_its_title_never_shown(
    web: Flask, app: App, team: Team
) -> None:
    ann, _bob = _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)  # carol's thread
    daves_deal = team.deals["dave"]  # "Other Inc pilot": bob's customer, nothing to do with carol
    missing = 987654
    for item in (f"deal:{daves_deal}", f"lead:{team.leads['dave']}", f"deal:{missing}"):
        answer = ann.post(
            f"/threads/{tid}/choose",
            data={"csrf_token": csrf(ann), "item": item, "back": "thread"},
            follow_redirects=True,
        )
        page = text(answer)
        assert "is not a deal, lead or project of this thread&#39;s persons" in page, item
        assert "Other Inc" not in page
        found = _thread(app, tid)
        assert found["waiting"] and found["linked"] is None
    assert all(a["deal_id"] is None for a in _activities(team, "Renewal quote"))
    page = text(ann.get(f"/threads/{tid}"))
    assert "Other Inc" not in page and "Another deal, lead or project of this thread" in page


def test_another_item_of_the_threads_persons_is_accepted_even_if_new(
    web: Flask, app: App, team: Team
) -> None:
    """An item made in the CRM after the cache was read is found in the CRM itself."""
    from datetime import timedelta

    from tests.web.support import T0

    ann, _bob = _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)
    (carol,) = [p.id for p in app.crm.search_persons("carol@customer.example")]
    fresh = team.pipedrive.add_deal("Carol: new site", carol, add_time=T0 - timedelta(days=40))
    answer = ann.post(
        f"/threads/{tid}/choose",
        data={"csrf_token": csrf(ann), "item": f"deal:{fresh}", "back": "thread"},
    )
    assert answer.status_code == 303
    page = text(ann.get(f"/threads/{tid}"))
    assert f"linked to deal:{fresh}" in page
    assert _thread(app, tid)["linked"] == f"deal:{fresh}"


def test_maillink_choose_refuses_an_item_of_other_persons(web: Flask, app: App, team: Team) -> None:
    from click.testing import CliRunner

    from maillink.cli import cli
    from maillink.errors import ConfigError

    _team_connected(web, app, team)
    tid = thread_id(app, RENEWAL)
    runner = CliRunner()
    refused = runner.invoke(
        cli, ["--config", str(team.config), "choose", str(tid), f"deal:{team.deals['dave']}"]
    )
    assert isinstance(refused.exception, ConfigError)
    assert "not a deal, lead or project of this thread's persons" in str(refused.exception)
    ill = runner.invoke(cli, ["--config", str(team.config), "choose", str(tid), "lead:12"])
    assert ill.exit_code == 2 and "is not an item" in ill.output
    assert _thread(app, tid)["waiting"]
    chosen = runner.invoke(
        cli, ["--config", str(team.config), "choose", str(tid), f"deal:{team.deals['carol']}"]
    )
    assert chosen.exit_code == 0, chosen.output
    assert f"linked to deal:{team.deals['carol']}: 2 message(s) linked" in chosen.output


def test_ids_out_of_range_are_404_on_postgresql_too(team: Team, pg_url: str) -> None:
    """PostgreSQL's Integer ids end at 2^31 - 1: a larger one is no route, not a DataError."""
    from tests.web.support import PUBLIC_URL

    from maillink.config import load_settings
    from maillink.web.factory import create_app
    from maillink.web.settings import WebSettings

    lines = team.config.read_text().splitlines()
    config = team.folder / "maillink-pg.toml"
    config.write_text(
        "\n".join(f'url = "{pg_url}"' if line.startswith("url =") else line for line in lines)
    )
    on_pg = App(load_settings(str(config)))
    web = create_app(on_pg, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL), testing=True)
    try:
        client = sign_in(web, on_pg, ADMIN, admin=True)
        token = csrf(client)
        for big in (2**31, 2**63):
            assert client.get(f"/threads/{big}").status_code == 404
            assert client.get(f"/mailboxes/{big}/progress").status_code == 404
            answer = client.post(f"/threads/{big}/unlink", data={"csrf_token": token})
            assert answer.status_code == 404
        assert client.get(f"/threads/{2**31 - 1}").status_code == 404  # in range, no such thread
    finally:
        web.extensions["maillink"].jobs.stop()
        on_pg.close()
