"""Lease acquisition at 10,000 mailboxes on PostgreSQL: the plans read indexes, not every lease,
and the statistics those plans rest on are kept current by maillink itself (autovacuum may be off).

Plans are asserted, not timed: EXPLAIN of the very statements `leases.acquire` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from maillink import holders
from maillink.store import Store, leases

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


def _plan(store: Store, statement: str, params: Any) -> dict[str, Any]:
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}", params)
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

    selects = [(s, p) for s, p in _statements(pg, take) if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2  # the holders that might be gone, then the due mailboxes
    holders_plan, due_plan = (_plan(pg, s, p) for s, p in selects)

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
        assert len(later) == 1  # the missing-rows check only: no statistics query within the hour
        hour = _statements(daemon, lambda: ensure(NOW + timedelta(hours=1)))
        assert any("pg_class" in s for s, _ in hour)
        assert not any(s.startswith("ANALYZE") for s, _ in hour)  # current: nothing to do
    finally:
        daemon.close()
