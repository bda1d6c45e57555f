"""credentials.json `gmail_push`: the push subscription's service account (OIDC), its audience,
the certificates URL, and the shared token kept as the fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from maillink.config import GOOGLE_CERTS_URL, GmailPushOidc, load_credentials
from maillink.errors import ConfigError

ACCOUNT = "gmail-push@acme-mail.iam.gserviceaccount.com"


def _load(tmp_path: Path, gmail_push: Any) -> Any:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"gmail_push": gmail_push}))
    return load_credentials(path, env={})


def test_a_service_account_alone_turns_oidc_verification_on(tmp_path: Path) -> None:
    credentials = _load(tmp_path, {"service_account": ACCOUNT.upper()})
    assert credentials.gmail_push_oidc == GmailPushOidc(ACCOUNT, None, GOOGLE_CERTS_URL)
    assert credentials.gmail_push_token is None


def test_audience_certs_url_and_token_are_read_together(tmp_path: Path) -> None:
    credentials = _load(
        tmp_path,
        {
            "service_account": ACCOUNT,
            "audience": "https://mail.acme.example/push/gmail",
            "certs_url": "http://127.0.0.1:9/oauth2/v1/certs",
            "token": "a-long-shared-push-token",
        },
    )
    assert credentials.gmail_push_oidc == GmailPushOidc(
        ACCOUNT, "https://mail.acme.example/push/gmail", "http://127.0.0.1:9/oauth2/v1/certs"
    )
    assert credentials.gmail_push_token == "a-long-shared-push-token"


@pytest.mark.parametrize(
    ("gmail_push", "fragment"),
    [
        ({}, "gmail_push.service_account is missing"),
        ({"service_account": "not-an-email"}, "gmail_push.service_account must be"),
        ({"service_account": ACCOUNT, "certs_url": "http://google.example/certs"}, "certs_url"),
        ({"service_account": ACCOUNT, "audiance": "x"}, "did you mean audience"),
    ],
)
def test_bad_gmail_push_credentials_name_the_key(
    tmp_path: Path, gmail_push: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, gmail_push)
    assert fragment in str(error.value)
