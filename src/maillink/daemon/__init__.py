"""Rounds over the mailboxes: `sync --once` runs one (`rounds.sync_round`), `backfill` holds one
mailbox (`rounds.hold_mailbox`), `daemon` runs them on a schedule (`loop.py`, `schedule.py`).

Every mailbox round runs under the mailbox's lease (`store/leases.py`) and is built by
`rounds.Rounds.hold`, the only place a round's syncer is put together.
"""

from maillink.daemon.loop import Daemon, run_daemon
from maillink.daemon.rounds import (
    HELD_ELSEWHERE,
    Holding,
    Rounds,
    held_elsewhere,
    hold_mailbox,
    sync_round,
)
from maillink.daemon.schedule import Schedule

__all__ = [
    "HELD_ELSEWHERE",
    "Daemon",
    "Holding",
    "Rounds",
    "Schedule",
    "held_elsewhere",
    "hold_mailbox",
    "run_daemon",
    "sync_round",
]
