"""bench/freshness.py at a tiny size, to keep it running: 4 mailboxes (2 Gmail, 2 Outlook), a few
emails, a 2-second interval. Only shapes: every email became an activity in both modes, the
figures are numbers, the deal won was seen. How fast is the bench's business, not the suite's."""

from __future__ import annotations

import math

import pytest
from bench import freshness


def test_freshness_bench_reports_both_modes_and_the_deal_won(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = freshness.parse(
        ["--mailboxes", "4", "--emails", "4", "--minutes", "0.05", "--interval", "2"]
        + ["--customers", "3", "--deals", "2", "--deal-wait", "20", "--pg", pg_url]
    )
    results = freshness.run(args)

    for mode in (results.push, results.polling):
        assert len(mode.arrived) == 4
        assert set(mode.made) == set(mode.arrived)  # every email reached the CRM
        assert mode.outlook <= set(mode.arrived)
        delays = mode.delays()
        assert len(delays) == 4 and all(math.isfinite(d) and d >= 0 for d in delays)
        assert math.isfinite(mode.requests_per_email()) and mode.requests_per_email() > 0
    assert len(results.deals) == 2  # one customer mailing a Gmail mailbox, one an Outlook one
    for _, deal in results.deals:
        assert deal.warm == "single_open_item"  # the email before the win: on the open deal
        assert deal.reason in freshness.CLOSED  # seen through the webhook
        assert math.isfinite(deal.seen) and deal.webhook_status == 200
    shown = capsys.readouterr().out
    for heading in ("== push:", "== polling only:", "== a deal won", "load average"):
        assert heading in shown
    assert "p50" in shown and "p95" in shown and "provider requests per email" in shown


def test_freshness_help_names_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        freshness.parse(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--mailboxes", "--emails", "--minutes", "--interval", "--pg"):
        assert option in shown
