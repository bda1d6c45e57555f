"""The Gmail push endpoint authenticates Pub/Sub's requests by their OIDC token, verified against
the certificates the Google sandbox serves, as against Google's: a signed push wakes its
mailbox; forged, unsigned, misdirected and replayed ones change nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from tests.e2e.support import REP, connect
from tests.push.conftest import T0, TOPIC

from maillink.app import App
from maillink.config import GmailPushOidc
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, OpsServer, create_ops_app
from maillink.providers.gmail_cursor import GmailCursor
from maillink.push.gmail_watch import GmailWatches
from maillink.push.pubsub_auth import PushVerifier
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.google.push import SERVICE_ACCOUNT, SigningKey
from maillink.store import accounts

PUSH_TOKEN = "a-long-shared-push-token"


@dataclass
class Endpoint:
    url: str
    account_id: int
    woken: list[int] = field(default_factory=list)

    @property
    def push_url(self) -> str:
        return f"{self.url}/push/gmail"


@pytest.fixture
def endpoint(app: App, google: GoogleSandbox) -> Iterator[Endpoint]:
    """The daemon's ops endpoint with OIDC push auth; a mailbox connected and watched."""
    google.add_mailbox(REP)
    connect(app, google, REP)
    woken: list[int] = []
    oidc = GmailPushOidc(service_account=SERVICE_ACCOUNT, certs_url=google.certs_url)
    ctx = OpsContext(
        store=app.store,
        metrics=Metrics(),
        gmail_push_token=PUSH_TOKEN,
        gmail_push_verifier=PushVerifier(oidc),
        wake=woken.append,
    )
    server = OpsServer(create_ops_app(ctx), "127.0.0.1", 0).start()
    try:
        account = app.account(REP)
        google.push.subscribe(TOPIC, f"{server.url}/push/gmail")
        assert GmailWatches(app, TOPIC).check().watched == 1
        yield Endpoint(server.url, account.id, woken)
    finally:
        server.stop()


def _envelope(email: str = REP, history_id: int = 900_000_000, message_id: str = "7") -> dict:
    data = json.dumps({"emailAddress": email, "historyId": str(history_id)}).encode()
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": message_id},
        "subscription": "projects/acme-mail/subscriptions/gmail-push",
    }


def _post(endpoint: Endpoint, token: str | None, body: object, url: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(
        url or endpoint.push_url, json=body, headers=headers, timeout=10
    ).status_code


def test_new_mail_in_a_watched_mailbox_pushes_a_signed_request_that_wakes_it(
    endpoint: Endpoint, google: GoogleSandbox
) -> None:
    google.add_message(REP, headers=[("Subject", "Quote")], internal_date=T0, label_ids=("INBOX",))
    google.push.wait()
    (delivery,) = google.push.deliveries
    assert (delivery.email, delivery.status) == (REP, 204)
    assert endpoint.woken == [endpoint.account_id]


def test_a_change_outside_inbox_and_sent_pushes_nothing(
    endpoint: Endpoint, google: GoogleSandbox
) -> None:
    google.add_message(REP, headers=[("Subject", "Draft")], internal_date=T0, label_ids=("DRAFT",))
    google.push.wait()
    assert google.push.deliveries == [] and endpoint.woken == []


def test_the_certificates_are_fetched_once_for_many_pushes(
    endpoint: Endpoint, google: GoogleSandbox
) -> None:
    before = google.meter.requests["http"]
    for n in range(3):
        token = google.push.token(endpoint.push_url)
        assert _post(endpoint, token, _envelope(message_id=f"m{n}")) == 204
    assert google.meter.requests["http"] - before == 1
    assert endpoint.woken == [endpoint.account_id] * 3


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("unsigned", 401),
        ("other key", 401),
        ("other key, same key id", 401),
        ("expired", 401),
        ("not a JWT", 401),
        ("wrong audience", 403),
        ("wrong service account", 403),
        ("email not verified", 403),
        ("wrong issuer", 403),
        ("wrong shared token", 403),
    ],
)
def test_a_push_that_is_not_pubsubs_is_refused_and_wakes_nothing(
    endpoint: Endpoint, google: GoogleSandbox, case: str, status: int
) -> None:
    audience = endpoint.push_url
    url = None
    token: str | None = {
        "unsigned": None,
        "other key": lambda: google.push.token(audience, key=SigningKey()),
        "other key, same key id": lambda: google.push.token(
            audience, key=SigningKey(key_id=google.push.key.key_id)
        ),
        "expired": lambda: google.push.token(audience, lifetime=-3600),
        "not a JWT": lambda: "not-a-token",
        "wrong audience": lambda: google.push.token("https://elsewhere.example/push/gmail"),
        "wrong service account": lambda: google.push.token(
            audience, email="someone@evil.iam.gserviceaccount.com"
        ),
        "email not verified": lambda: google.push.token(audience, email_verified=False),
        "wrong issuer": lambda: google.push.token(audience, iss="https://evil.example"),
        "wrong shared token": lambda: None,
    }[case]
    if callable(token):
        token = token()
    if case == "wrong shared token":
        url = f"{endpoint.push_url}?token=not-the-token-at-all"
    assert _post(endpoint, token, _envelope(), url) == status
    assert endpoint.woken == []


def test_the_shared_token_in_the_url_still_works_as_the_fallback(endpoint: Endpoint) -> None:
    assert _post(endpoint, None, _envelope(), f"{endpoint.push_url}?token={PUSH_TOKEN}") == 204
    assert endpoint.woken == [endpoint.account_id]


def test_a_replayed_push_is_acknowledged_and_ignored(
    endpoint: Endpoint, google: GoogleSandbox
) -> None:
    token = google.push.token(endpoint.push_url)
    assert _post(endpoint, token, _envelope(message_id="42")) == 204
    assert _post(endpoint, token, _envelope(message_id="42")) == 204
    assert endpoint.woken == [endpoint.account_id]


def test_a_push_not_newer_than_the_synced_history_is_acknowledged_and_ignored(
    endpoint: Endpoint, google: GoogleSandbox, app: App
) -> None:
    with app.store.transaction() as conn:
        accounts.set_cursor(conn, endpoint.account_id, GmailCursor.history("5000").dumps())
    token = google.push.token(endpoint.push_url)
    assert _post(endpoint, token, _envelope(history_id=5000, message_id="a")) == 204
    assert _post(endpoint, token, _envelope(history_id=4999, message_id="b")) == 204
    assert endpoint.woken == []
    assert _post(endpoint, token, _envelope(history_id=5001, message_id="c")) == 204
    assert endpoint.woken == [endpoint.account_id]


@pytest.mark.parametrize(
    "body",
    [{}, {"message": {}}, {"message": {"data": "%%%"}}, [1, 2], {"message": {"data": "e30="}}],
)
def test_a_signed_push_with_a_malformed_body_is_400(
    endpoint: Endpoint, google: GoogleSandbox, body: object
) -> None:
    assert _post(endpoint, google.push.token(endpoint.push_url), body) == 400
    assert endpoint.woken == []


def test_a_signed_push_for_an_unknown_or_paused_mailbox_changes_nothing(
    endpoint: Endpoint, google: GoogleSandbox, app: App
) -> None:
    token = google.push.token(endpoint.push_url)
    assert _post(endpoint, token, _envelope(email="nobody@acme.example", message_id="x")) == 204
    with app.store.transaction() as conn:
        accounts.set_status(conn, endpoint.account_id, accounts.PAUSED)
    assert _post(endpoint, token, _envelope(message_id="y")) == 204
    assert endpoint.woken == []


def test_a_configured_audience_is_the_one_required(app: App, google: GoogleSandbox) -> None:
    oidc = GmailPushOidc(
        service_account=SERVICE_ACCOUNT,
        audience="https://mail.acme.example/push/gmail",
        certs_url=google.certs_url,
    )
    verifier = PushVerifier(oidc)
    claims = verifier.verify(google.push.token(oidc.audience or ""), ["http://127.0.0.1/x"])
    assert claims["email"] == SERVICE_ACCOUNT
    with pytest.raises(Exception, match="audience"):
        verifier.verify(google.push.token("http://127.0.0.1/x"), ["http://127.0.0.1/x"])
