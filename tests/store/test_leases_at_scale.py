"""Lease acquisition at 10,000 mailboxes on PostgreSQL: the plans read indexes, not every lease,
paused mailboxes are out of the way, and the statistics those plans rest on are kept current by
maillink itself (autovacuum may be off).

Plans are asserted, not timed: EXPLAIN of the very statements `leases.acquire` runs (with
ANALYZE where the number of index entries read is the point).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from maillink import holders
from maillink.store import Store, accounts, leases

MAILBOXES = 10_000
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
NOW_NAIVE = NOW.replace(tzinfo=None)  # as stored (UTC, no zone)


@pytest.fixture
def pg(pg_url: str) -> Iterator[Store]:
    store = Store.open(pg_url)
    yield store
    store.close()


def _accounts(conn: Connection) -> None:
    """MAILBOXES accounts in one statement, one in 50 paused."""
    conn.execute(
        text(
            "INSERT INTO accounts (id, email, provider, status, scopes, aliases, created_at)"
            " SELECT g, 'rep' || g || '@acme.example', 'gmail',"
            " CASE WHEN g % 50 = 0 THEN 'paused' ELSE 'active' END, '', '[]', :now"
            " FROM generate_series(1, :n) g"
        ),
        {"now": NOW_NAIVE, "n": MAILBOXES},
    )


def _seed(store: Store, *, backlog: bool, analyze: bool = True) -> None:
    """MAILBOXES mailboxes with leases: all due at once (`backlog`: after `ensure`, or when the
    fleet was stopped a while) or due over the next two minutes; 66 held, half of them by
    holders of this host."""
    host = holders.parse(holders.holder_id()).host
    due = (
        ":now - interval '1 hour'"
        if backlog
        else (":now + ((g * 7919) % 12000) * interval '10 milliseconds' - interval '1 second'")
    )
    with store.transaction() as conn:
        _accounts(conn)
        conn.execute(
            text(
                "INSERT INTO leases (account_id, owner, generation, acquired_at, expires_at,"
                " next_run_at, failures)"
                " SELECT g, CASE WHEN g % 150 = 0 THEN"
                "  (CASE WHEN g % 300 = 0 THEN :host ELSE 'elsewhere' END)"
                "  || '-' || (g % 4) || '-abcdef' END,"
                " g % 7,"
                " CASE WHEN g % 150 = 0 THEN :now END,"
                " CASE WHEN g % 150 = 0 THEN :now + interval '1 minute' END,"
                f" {due}, 0"
                " FROM generate_series(1, :n) g"
            ),
            {"now": NOW_NAIVE, "host": host, "n": MAILBOXES},
        )
    with store.transaction() as conn:
        if analyze:
            conn.execute(text("ANALYZE leases, accounts"))
        # Counted in pg_stat_user_tables when this transaction ends, not up to a second later.
        conn.execute(text("SELECT pg_stat_force_next_flush()"))


def _statements(store: Store, call: Any) -> list[tuple[str, Any]]:
    """The SQL statements (with their parameters) that `call()` runs on `store`."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return seen


def _plan(store: Store, statement: str, params: Any, *, analyze: bool = False) -> dict[str, Any]:
    """The statement's plan (`analyze`: run, with the rows each node read; rolled back)."""
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
        cursor.execute(f"EXPLAIN ({options}) {statement}", params)
        plan: dict[str, Any] = cursor.fetchone()[0][0]["Plan"]
        raw.rollback()
        return plan
    finally:
        raw.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _on_leases(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index) of every node that reads the leases table or one of its indexes."""
    return [
        (node["Node Type"], node.get("Index Name"))
        for node in _nodes(plan)
        if node.get("Relation Name") == "leases"
        or str(node.get("Index Name", "")).startswith(("ix_leases_", "leases_"))
    ]


@pytest.mark.parametrize("backlog", [True, False], ids=["all-due", "due-over-two-minutes"])
def test_acquire_reads_indexes_not_every_lease_at_10000_mailboxes(pg: Store, backlog: bool) -> None:
    _seed(pg, backlog=backlog)

    def take() -> None:
        with pg.engine.connect() as conn, conn.begin():
            got = leases.acquire(
                conn, "me-1-abcdef", now=NOW, duration=LEASE, limit=4, exclude={1, 2, 3}
            )
            assert len(got) == 4
            conn.rollback()

    statements = _statements(pg, take)
    selects = [(s, p) for s, p in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2  # the holders that might be gone, then the due mailboxes
    holders_plan, due_plan = (_plan(pg, s, p) for s, p in selects)
    (taking,) = [(s, p) for s, p in statements if s.lstrip().upper().startswith("UPDATE")]
    update_plan = _plan(pg, *taking)

    # The holders of this host that might be gone: only the held leases are read.
    assert _on_leases(holders_plan) in (
        [("Bitmap Heap Scan", None), ("Bitmap Index Scan", "ix_leases_held")],
        [("Index Scan", "ix_leases_held")],
        [("Index Only Scan", "ix_leases_held")],
    ), holders_plan

    # The due mailboxes: read in the order they are taken, from the index, and nothing sorted,
    # so that taking 4 of 10,000 due mailboxes reads a few index entries.
    assert _on_leases(due_plan) == [("Index Scan", "ix_leases_due")], due_plan
    kinds = {node["Node Type"] for node in _nodes(due_plan)}
    assert not kinds & {"Sort", "Incremental Sort", "Seq Scan", "Hash Join"}, kinds

    # The four taken, in one compare-and-set UPDATE, found by their key.
    reads = [(kind, index) for kind, index in _on_leases(update_plan) if kind != "ModifyTable"]
    assert reads in (
        [("Index Scan", "leases_pkey")],
        [("Bitmap Heap Scan", None), ("Bitmap Index Scan", "leases_pkey")],
    ), update_plan


def _seed_mostly_paused(store: Store) -> None:
    """MAILBOXES mailboxes, 9 in 10 paused, all free; the paused ones are the most overdue (as
    an earlier version left them: their next run where it was when they were paused)."""
    with store.transaction() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (id, email, provider, status, scopes, aliases, created_at)"
                " SELECT g, 'rep' || g || '@acme.example', 'gmail',"
                " CASE WHEN g % 10 = 0 THEN 'active' ELSE 'paused' END, '', '[]', :now"
                " FROM generate_series(1, :n) g"
            ),
            {"now": NOW_NAIVE, "n": MAILBOXES},
        )
        conn.execute(
            text(
                "INSERT INTO leases (account_id, generation, next_run_at, failures)"
                " SELECT g, 1, :now - CASE WHEN g % 10 = 0 THEN interval '1 hour'"
                " ELSE interval '1 day' END + g * interval '1 millisecond', 0"
                " FROM generate_series(1, :n) g"
            ),
            {"now": NOW_NAIVE, "n": MAILBOXES},
        )
    with store.transaction() as conn:
        conn.execute(text("ANALYZE leases, accounts"))


def _due_entries_read(store: Store) -> int:
    """How many entries of `ix_leases_due` taking 4 due mailboxes reads (EXPLAIN ANALYZE of
    the very statement `leases.acquire` runs)."""

    def take() -> None:
        with store.engine.connect() as conn, conn.begin():
            assert len(leases.acquire(conn, "me-1-abcdef", now=NOW, duration=LEASE, limit=4)) == 4
            conn.rollback()

    selects = [(s, p) for s, p in _statements(store, take) if s.lstrip().startswith("SELECT")]
    plan = _plan(store, *selects[-1], analyze=True)
    (scan,) = [n for n in _nodes(plan) if n.get("Index Name") == "ix_leases_due"]
    return int(scan["Actual Rows"]) * int(scan["Actual Loops"])


def test_paused_mailboxes_are_out_of_the_due_range_so_taking_reads_a_few_entries(
    pg: Store,
) -> None:
    _seed_mostly_paused(pg)
    assert _due_entries_read(pg) > 9_000  # skipped one by one through the join on the status

    with pg.transaction() as conn:  # what a daemon's start does with such rows
        leases.ensure(conn, NOW)
        conn.execute(text("ANALYZE leases"))
    assert _due_entries_read(pg) == 4

    # Pausing a mailbox through the store moves it out at once, in the same transaction.
    with pg.transaction() as conn:
        for account_id in (10, 20, 30, 40, 50):
            accounts.set_status(conn, account_id, accounts.PAUSED)
    assert _due_entries_read(pg) == 4


def _reltuples(conn: Connection) -> dict[str, float]:
    """The row counts PostgreSQL's statistics know (-1: never analyzed)."""
    rows = conn.execute(
        text(
            "SELECT relname, reltuples FROM pg_class"
            " WHERE oid IN ('leases'::regclass, 'accounts'::regclass)"
        )
    )
    return {row.relname: float(row.reltuples) for row in rows}


def test_ensure_analyzes_the_tables_after_adding_many_lease_rows(pg: Store) -> None:
    with pg.transaction() as conn:
        assert leases.ensure(conn, NOW) == 0
    with pg.transaction() as conn:
        _accounts(conn)
    with pg.transaction() as conn:
        assert leases.ensure(conn, NOW) == MAILBOXES  # within the hour: only the new rows count
    with pg.engine.connect() as conn:
        assert _reltuples(conn) == {"leases": MAILBOXES, "accounts": MAILBOXES}


def test_a_daemon_start_analyzes_tables_without_statistics_then_checks_once_an_hour(
    pg_url: str,
) -> None:
    filled = Store.open(pg_url)
    _seed(filled, backlog=True, analyze=False)  # filled without statistics (autovacuum off)
    with filled.engine.connect() as conn:
        assert leases.stale_statistics(conn) == ["accounts", "leases"]
        assert _reltuples(conn)["leases"] < 0
    filled.close()

    daemon = Store.open(pg_url)  # a new process's first look at the database
    try:

        def ensure(now: datetime) -> None:
            with daemon.transaction() as conn:
                assert leases.ensure(conn, now) == 0

        first = _statements(daemon, lambda: ensure(NOW))
        assert ("ANALYZE accounts, leases", {}) in first, first
        with daemon.engine.connect() as conn:
            assert _reltuples(conn)["leases"] == MAILBOXES
            assert leases.stale_statistics(conn) == []

        later = _statements(daemon, lambda: ensure(NOW + timedelta(minutes=59)))
        # The missing rows, the leases out of their place (2): no statistics query within the hour.
        assert len(later) == 3 and not any("pg_class" in s for s, _ in later), later
        hour = _statements(daemon, lambda: ensure(NOW + timedelta(hours=1)))
        assert any("pg_class" in s for s, _ in hour)
        assert not any(s.startswith("ANALYZE") for s, _ in hour)  # current: nothing to do
    finally:
        daemon.close()
