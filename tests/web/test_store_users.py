"""Web users in the store: hashed tokens, who owns which mailbox, and the 0002 upgrade in place."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, insert, select

from maillink.model import Address, Direction, Message
from maillink.store import MIGRATIONS, Store, accounts, mail, schema, users


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'maillink.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def test_a_rep_owns_what_they_connected_and_their_own_address(store: Store) -> None:
    with store.transaction() as conn:
        ann, _ = users.issue(conn, "Ann@Acme.example", is_admin=False)
        boss, _ = users.issue(conn, "boss@acme.example", is_admin=True)
        own = accounts.upsert(conn, "ann@acme.example", "gmail", "t", "s")
        shared = accounts.upsert(conn, "sales@acme.example", "gmail", "t", "s")
        other = accounts.upsert(conn, "bob@acme.example", "gmail", "t", "s")
        users.set_owner(conn, shared.id, ann.id)
        assert ann.email == "ann@acme.example"
        assert sorted(users.visible_account_ids(conn, ann) or []) == sorted([own.id, shared.id])
        assert users.visible_account_ids(conn, boss) is None
        assert not users.can_see_account(conn, ann, other.id)
        assert users.can_see_account(conn, boss, other.id)
        assert users.owner_emails(conn) == {shared.id: ann.email}


def test_removing_a_user_keeps_their_mailboxes(store: Store) -> None:
    with store.transaction() as conn:
        ann, token = users.issue(conn, "ann@acme.example", is_admin=False)
        account = accounts.upsert(conn, "sales@acme.example", "gmail", "t", "s")
        users.set_owner(conn, account.id, ann.id)
        assert users.remove(conn, "ann@acme.example")
        assert users.by_token(conn, token) is None
        assert users.owner_of(conn, account.id) is None
        assert accounts.get(conn, "sales@acme.example") is not None
        assert not users.remove(conn, "ann@acme.example")


@pytest.mark.parametrize("text", ["", "ann", "ann@", "@acme.example", "ann@localhost", "a b@c.d"])
def test_what_is_not_an_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        users.normalize_email(text)


def test_upgrading_a_database_of_0001_adds_web_users_and_keeps_every_mailbox(url: str) -> None:
    """The new column is added in place: copying `accounts` would cascade-delete its mail."""
    old = Store.open(url, upgrade=False)  # foreign keys on, as maillink always opens SQLite
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    now = datetime.now(UTC)
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        account_id = connection.execute(
            insert(schema.accounts).values(
                email="ann@acme.example", provider="gmail", token="t", scopes="s", created_at=now
            )
        ).inserted_primary_key[0]
        accounts.set_cursor(connection, account_id, "12345")
        mail.save_messages(connection, account_id, [_message()], {})
    old.close()

    upgraded = Store.open(url)
    assert upgraded.schema_version() == Store.newest_schema_version()
    with upgraded.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(schema.messages)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(schema.threads)).scalar() == 1
        assert accounts.get_cursor(conn, account_id) == "12345"
        assert users.owner_of(conn, account_id) is None
        ann, _token = users.issue(conn, "ann@acme.example", is_admin=False)
        users.set_owner(conn, account_id, ann.id)
        assert users.owner_of(conn, account_id) == ann.id
    upgraded.close()


def _message() -> Message:
    return Message(
        account="ann@acme.example",
        provider_id="m1",
        thread_key="t1",
        message_id="m1@mail.example",
        date=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        direction=Direction.INBOUND,
        sender=Address("carol@customer.example", "Carol"),
        to=(Address("ann@acme.example"),),
        subject="Quote",
    )


def test_upgrading_to_0005_spends_used_links_and_gives_old_ones_a_day(url: str) -> None:
    """Links issued before sign-in links expired: a used one is spent, an unused one lasts a day
    from its user's creation; sessions from before have no row, so they end."""
    from datetime import timedelta

    from sqlalchemy import column, table

    old = Store.open(url, upgrade=False)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    legacy = table(  # web_users as 0004 left it
        "web_users",
        column("email"),
        column("is_admin"),
        column("token_hash"),
        column("created_at", schema.UTCDateTime()),
        column("last_sign_in_at", schema.UTCDateTime()),
    )
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        for email, created, signed_in in (
            ("used@acme.example", now - timedelta(hours=2), now - timedelta(hours=1)),
            ("fresh@acme.example", now - timedelta(hours=2), None),
            ("stale@acme.example", now - timedelta(days=3), None),
        ):
            connection.execute(
                insert(legacy).values(
                    email=email,
                    is_admin=False,
                    token_hash=users.hash_token(email),
                    created_at=created.replace(tzinfo=UTC),
                    last_sign_in_at=signed_in.replace(tzinfo=UTC) if signed_in else None,
                )
            )
    old.close()

    upgraded = Store.open(url)
    at = datetime.now(UTC)
    with upgraded.transaction() as conn:
        states = {u.email: users.link_state(u, at) for u in users.all_users(conn)}
        fresh = users.by_token(conn, "fresh@acme.example")
        assert fresh is not None and users.use_link(conn, fresh, at)
        assert not users.use_link(conn, fresh, at)  # once
    assert states == {
        "used@acme.example": users.LinkState.USED,
        "fresh@acme.example": users.LinkState.VALID,
        "stale@acme.example": users.LinkState.EXPIRED,
    }
    upgraded.close()


def test_sessions_end_with_their_user_and_expire(store: Store) -> None:
    from datetime import timedelta

    at = datetime.now(UTC)
    with store.transaction() as conn:
        ann, _ = users.issue(conn, "ann@acme.example", is_admin=False)
        live = users.start_session(conn, ann.id, now=at)
        old = users.start_session(conn, ann.id, now=at - timedelta(hours=13))
        assert users.session_user(conn, live, at) == ann
        assert users.session_user(conn, old, at) is None  # past its 12 hours
        assert users.session_user(conn, "made-up", at) is None
        assert users.remove(conn, ann.email)
        assert users.session_user(conn, live, at) is None
