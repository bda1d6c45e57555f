"""What `maillink sync --once` (and `backfill`) tell about a round: a line per mailbox, a line
per mailbox skipped because another live process holds it (on stderr), the round's totals, and
the same as JSON (`sync --once --json`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from maillink import holders
from maillink.sync import RoundResult


def _when(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at is not None else None


def holder_text(result: RoundResult) -> str:
    """`held by pid 123 on web1 (web1-123-…) until 2026-…`, or '' when the holder is unknown."""
    if result.held_by is None:
        return ""
    holder = holders.parse(result.held_by)
    who = holder.describe()
    text = f"held by {who}" + (f" ({holder.raw})" if who != holder.raw else "")
    if result.held_until is not None:
        text += f" until {_when(result.held_until)}"
    return text


def skip_line(result: RoundResult) -> str:
    """The stderr line of a mailbox another live process holds."""
    detail = holder_text(result)
    return f"maillink: {result.account}: skipped, {result.skipped}" + (
        f"; {detail}" if detail else ""
    )


def takeover_line(result: RoundResult) -> str:
    """The stderr line of a mailbox whose lease this run took from a process that is gone (or
    whose lease had expired): a run before it crashed or was killed."""
    holder = holders.parse(result.taken_over_from or "")
    return (
        f"maillink: {result.account}: taken over from {holder.describe()}: that run ended "
        "without giving the mailbox back (killed, crashed or stalled)"
    )


def mailbox_line(result: RoundResult, dry_run: bool = False) -> str:
    """One mailbox's round in a line."""
    if result.skipped:
        detail = holder_text(result)
        return f"{result.account}: skipped, {result.skipped}" + (f"; {detail}" if detail else "")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.reasons.items())) or "none"
    d = result.delivery
    text = (
        f"{result.account}: {result.messages} new messages over {result.pages} pages; "
        f"decisions: {reasons}"
    )
    if not dry_run:
        text += f"; activities created {d.created}, updated {d.updated}"
        if d.found_again:
            text += f", found again {d.found_again}"
        if d.failed:
            text += f", failed {d.failed}"
        if d.redecided:
            text += f", decided again after a refusal {d.redecided}"
        if d.refused:
            text += f", refused {d.refused} (maillink outbox list)"
        if result.crm_retries:
            text += f"; CRM retried {result.crm_retries} times in this run"
        left = _left(result)
        if left:
            text += f"; left for later: {left}"
        if d.parked_until:
            text += f"; CRM writes parked until {d.parked_until.isoformat()}"
    if result.error:
        text += f"; error: {result.error}"
    return text


def _left(result: RoundResult) -> str:
    parts = []
    if result.crm_writes_left:
        parts.append(f"{result.crm_writes_left} CRM writes")
    if result.undecided_left:
        parts.append(f"{result.undecided_left} undecided messages")
    return ", ".join(parts)


def totals_line(results: Sequence[RoundResult]) -> str:
    """The round's summary: mailboxes synced and skipped, what is left for later."""
    skipped = [r for r in results if r.skipped]
    synced = [r for r in results if not r.skipped]
    failed = [r for r in synced if r.error]
    text = f"sync: {len(synced)} mailboxes synced"
    if failed:
        text += f" ({len(failed)} with errors)"
    if skipped:
        text += f", {len(skipped)} skipped (held by another process: "
        text += ", ".join(r.account for r in skipped) + ")"
    text += (
        f"; {sum(r.messages for r in synced)} new messages, "
        f"{sum(r.delivery.created for r in synced)} activities created"
    )
    refused = sum(r.delivery.refused for r in synced)
    if refused:
        text += f"; {refused} refused by the CRM (maillink outbox list)"
    writes = sum(r.crm_writes_left for r in synced)
    undecided = sum(r.undecided_left for r in synced)
    if writes or undecided:
        text += f"; left for later: {writes} CRM writes, {undecided} undecided messages"
    return text


def mailbox_json(result: RoundResult) -> dict[str, Any]:
    d = result.delivery
    status = (
        "skipped"
        if result.skipped
        else "stopped"
        if result.stopped
        else "error"
        if result.error
        else "ok"
    )
    held = None
    if result.skipped:
        holder = holders.parse(result.held_by) if result.held_by else None
        held = {
            "reason": result.skipped,
            "holder": result.held_by,
            "host": holder.host if holder else None,
            "pid": holder.pid if holder else None,
            "until": _when(result.held_until),
        }
    return {
        "account": result.account,
        "status": status,
        "skipped": held,
        "messages": result.messages,
        "pages": result.pages,
        "decisions": dict(sorted(result.reasons.items())),
        "activities": {
            "created": d.created,
            "updated": d.updated,
            "found_again": d.found_again,
            "failed_attempts": d.failed,
            "refused": d.refused,
        },
        "crm_retries": result.crm_retries,
        "left_for_later": {
            "crm_writes": result.crm_writes_left,
            "undecided_messages": result.undecided_left,
        },
        "crm_parked_until": _when(d.parked_until),
        "taken_over_from": result.taken_over_from,
        "error": result.error,
    }


def round_json(results: Sequence[RoundResult]) -> dict[str, Any]:
    """`sync --once --json`: every mailbox, then the round's totals."""
    synced = [r for r in results if not r.skipped]
    return {
        "mailboxes": [mailbox_json(r) for r in results],
        "summary": {
            "synced": len(synced),
            "skipped": sum(1 for r in results if r.skipped),
            "errors": sum(1 for r in synced if r.error),
            "messages": sum(r.messages for r in synced),
            "activities_created": sum(r.delivery.created for r in synced),
            "activities_updated": sum(r.delivery.updated for r in synced),
            "activities_refused": sum(r.delivery.refused for r in synced),
            "left_for_later": {
                "crm_writes": sum(r.crm_writes_left for r in synced),
                "undecided_messages": sum(r.undecided_left for r in synced),
            },
        },
    }
