"""The store: schema creation and in-place upgrades, idempotent pages, tokens never in plaintext."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from maillink.errors import ConfigError
from maillink.model import Address, Direction, Message
from maillink.secrets import TokenCipher
from maillink.store import Store, accounts, mail
from maillink.store.schema import metadata

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _message(provider_id: str, thread: str, date: datetime, **kw: object) -> Message:
    fields: dict[str, object] = {
        "account": "rep@acme.example",
        "provider_id": provider_id,
        "thread_key": thread,
        "message_id": f"{provider_id}@mail.example",
        "date": date,
        "direction": Direction.INBOUND,
        "sender": Address("ann@customer.example", "Ann"),
        "to": (Address("rep@acme.example"),),
        "subject": "Quote",
    }
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def test_new_database_is_at_the_newest_schema_version(store: Store) -> None:
    assert store.schema_version() == Store.newest_schema_version()


def test_migrations_create_exactly_the_schema_the_queries_use(store: Store) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_opening_an_existing_database_again_upgrades_in_place_and_keeps_data(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = Store.open(url)
    with first.transaction() as conn:
        accounts.upsert(conn, "rep@acme.example", "gmail", "encrypted", "scope")
    first.close()
    again = Store.open(url)
    with again.transaction() as conn:
        assert accounts.get(conn, "REP@acme.example") is not None
    assert again.schema_version() == Store.newest_schema_version()


def test_an_unknown_database_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        Store.open("postgresql://maillink:s3cret@127.0.0.1:1/nowhere")
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigError):
        Store.open("not a url at all")


def test_saving_a_page_twice_stores_each_message_once(store: Store) -> None:
    with store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        page = [_message("m1", "t1", T0), _message("m2", "t1", T0 + timedelta(hours=1))]
        first = mail.save_messages(conn, account.id, page, {"t1": T0 - timedelta(days=2)})
        again = mail.save_messages(conn, account.id, page, {})
        assert first == again
        assert mail.known_messages(conn, account.id, ["m1", "m2", "m3"]) == {"m1", "m2"}
        assert mail.thread_dates(conn, account.id, ["t1"]) == {"t1": T0 - timedelta(days=2)}
        (rows,) = mail.messages_of_threads(conn, list(first)).values()
        assert [r["provider_id"] for r in rows] == ["m1", "m2"]


def test_a_later_partial_copy_never_blanks_stored_headers(store: Store) -> None:
    with store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        mail.save_messages(conn, account.id, [_message("m1", "t1", T0, snippet="hello")], {})
        mail.save_messages(conn, account.id, [_message("m1", "t1", T0, subject="", snippet="")], {})
        (tid,) = mail.undecided_threads(conn, account.id)
        (row,) = mail.thread_messages(conn, tid)
        assert row["headers"]["subject"] == "Quote"
        assert row["headers"]["snippet"] == "hello"


def test_a_thread_first_date_only_moves_earlier(store: Store) -> None:
    with store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        mail.save_messages(conn, account.id, [_message("m2", "t1", T0)], {"t1": T0})
        mail.save_messages(conn, account.id, [_message("m1", "t1", T0 - timedelta(days=1))], {})
        mail.save_messages(conn, account.id, [_message("m3", "t1", T0 + timedelta(days=1))], {})
        assert mail.thread_dates(conn, account.id, ["t1"])["t1"] == T0 - timedelta(days=1)


def test_refresh_tokens_are_never_stored_in_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = Store.open(f"sqlite:///{path}")
    cipher = TokenCipher([TokenCipher.generate_key()])
    secret = "1//refresh-token-that-must-not-leak"
    with store.transaction() as conn:
        accounts.upsert(conn, "rep@acme.example", "gmail", cipher.encrypt(secret), "s")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in raw
    with Store.open(f"sqlite:///{path}").transaction() as conn:
        stored = accounts.get(conn, "rep@acme.example")
        assert stored is not None and stored.token is not None
        assert cipher.decrypt(stored.token) == secret


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError), store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        mail.save_messages(conn, account.id, [_message("m1", "t1", datetime(2026, 1, 1))], {})


def test_caching_the_same_person_twice_replaces_it_on_both_databases(store: Store) -> None:
    from maillink.model import Person
    from maillink.store import cache

    now = datetime.now(UTC)
    with store.transaction() as conn:
        cache.put_persons(conn, {"ann@x.example": [Person(1, "Ann")]}, now)
    with store.transaction() as conn:
        cache.put_persons(conn, {"ann@x.example": [Person(2, "Ann B")]}, now)
        found = cache.fresh_persons(conn, ["ann@x.example"], now, timedelta(hours=1))
    assert found == {"ann@x.example": [Person(2, "Ann B")]}
    with store.transaction() as conn:
        cache.forget(conn, emails=["ANN@x.example"])
        assert cache.fresh_persons(conn, ["ann@x.example"], now, timedelta(hours=1)) == {}
