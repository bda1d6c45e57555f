"""A busy Microsoft token endpoint (a bare 429, no JSON body) is one warning line in the logs,
not MSAL's ERROR with a traceback; any other answer that is not JSON stays MSAL's error."""

from __future__ import annotations

import logging

import pytest
from tests.providers.test_gmail import Sleeps
from tests.providers.test_idle_daemon import TOKEN_PATH, app, google, microsoft_box, ms

from maillink.app import App
from maillink.providers.retry import RetryPolicy
from maillink.sandbox._server import Fault
from maillink.sandbox.microsoft import MicrosoftSandbox

__all__ = ["app", "google", "ms"]

MSAL_OAUTH2 = "msal.oauth2cli.oauth2"


def _sync_after(app: App, ms: MicrosoftSandbox, fault: Fault) -> str | None:
    email = microsoft_box(app, ms, 0)
    ms.expire_access_tokens(email)  # Graph refuses the kept token (401): a refresh is needed
    ms.faults.add(fault)
    account = app.account(email)
    provider = app.provider_for(account, policy=RetryPolicy(sleep=Sleeps()))
    return app.syncer().run(account, provider).error


@pytest.mark.parametrize("status", [429, 503])
def test_a_bare_busy_answer_of_the_token_endpoint_is_one_warning_line(
    app: App, ms: MicrosoftSandbox, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        error = _sync_after(app, ms, Fault(path=TOKEN_PATH, status=status, body="", times=1))

    assert error is None  # waited out by the retry policy, then refreshed
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.exc_info] == []
    msal_lines = [r.getMessage() for r in caplog.records if r.name.startswith("msal")]
    assert msal_lines in (
        [],  # a bare 5xx: MSAL raises it without a log line
        [f"the Microsoft token endpoint answered {status} without a JSON body (busy)"],
    )
    if status == 429:
        assert len(msal_lines) == 1


def test_a_token_answer_that_is_not_json_otherwise_stays_msals_error(
    app: App, ms: MicrosoftSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    garbled = Fault(path=TOKEN_PATH, status=400, body="<html>proxy error</html>", times=1)
    with caplog.at_level(logging.INFO):
        _sync_after(app, ms, garbled)

    (record,) = [r for r in caplog.records if r.name == MSAL_OAUTH2]
    assert record.levelno == logging.ERROR and record.exc_info
    assert "not in json format" in record.getMessage()
