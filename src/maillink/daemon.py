"""Rounds over every active mailbox: `sync --once` runs one, `daemon` runs them on a schedule."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from maillink.crm.base import CRMError
from maillink.errors import ConfigError
from maillink.store import accounts
from maillink.sync import RoundResult, poll_crm_changes


def sync_round(app: Any, *, should_stop: Callable[[], bool] = lambda: False) -> list[RoundResult]:
    """Poll the CRM's changes once, then one incremental round per active mailbox.

    One mailbox's failure (revoked grant, provider outage, a token the key cannot decrypt) is
    recorded on that mailbox and never stops the others.
    """
    with contextlib.suppress(CRMError):  # stale caches expire on their own; linking goes on
        poll_crm_changes(app.store, app.crm)
    with app.store.engine.connect() as conn:
        targets = [a for a in accounts.all_accounts(conn) if a.status == accounts.ACTIVE]
    results = []
    syncer = app.syncer()
    for account in targets:
        if should_stop():
            break
        try:
            provider = app.provider_for(account)
        except ConfigError as exc:
            result = RoundResult(account=account.email, error=str(exc))
            with app.store.transaction() as conn:
                accounts.synced(conn, account.id, result.error)
            results.append(result)
            continue
        results.append(syncer.run(account, provider, should_stop=should_stop))
    return results


def run_daemon(
    app: Any,
    *,
    should_stop: Callable[[], bool],
    out: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Rounds every `[sync] interval_seconds` until asked to stop (the page in hand is finished)."""
    interval = app.settings.sync.interval_seconds
    while not should_stop():
        started = time.monotonic()
        for result in sync_round(app, should_stop=should_stop):
            if result.messages or result.error:
                out(
                    f"{result.account}: {result.messages} new messages"
                    + (f"; error: {result.error}" if result.error else "")
                )
        while not should_stop() and time.monotonic() - started < interval:
            sleep(min(1.0, interval))
