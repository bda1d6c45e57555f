"""bench/fleet.py, the fleet benchmark, is not run by the suite: only its command line and the
pieces that turn its samples into figures, and the counting of SQL at the driver."""

from __future__ import annotations

import pytest
from bench import fleet
from bench._counted import Counts


def test_fleet_help_names_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        fleet.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--mailboxes", "--daemons", "--interval", "--scale", "--arrivals", "--minutes"):
        assert option in shown


def test_refreshes_are_told_minute_by_minute_from_the_start() -> None:
    samples = [(100.0, 5), (130.0, 40), (170.0, 41), (290.0, 41), (300.0, 43)]
    assert fleet.refresh_timeline(samples, since=100.0) == "40, 1, 0, 2"


def test_percentiles_and_their_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (fleet.pct(values, 0.5), fleet.pct(values, 0.95)) == (51.0, 96.0)
    assert fleet.spread([]) == "no sample"


class _Info:
    def __init__(self, status: int) -> None:
        self.transaction_status = status


class _Conn:
    def __init__(self) -> None:
        self.autocommit = False
        self.info = _Info(2)  # in a transaction


def test_driver_counts_tell_statements_pings_and_writing_transactions() -> None:
    counts, conn = Counts(), _Conn()
    counts.statement(conn, ";")
    counts.statement(conn, "SELECT 1 FROM leases")
    counts.statement(conn, "UPDATE leases SET owner = NULL")
    counts.end(conn, "commit")
    counts.statement(conn, "SELECT x FROM t FOR UPDATE SKIP LOCKED")
    counts.end(conn, "rollback")
    conn.info = _Info(0)  # idle: a rollback sends nothing
    counts.end(conn, "rollback")
    totals = counts.snapshot()["totals"]
    assert totals == {
        "statements": 4,
        "pings": 1,
        "transactions": 2,
        "commit": 1,
        "rollback": 1,
        "writing": 2,
    }
