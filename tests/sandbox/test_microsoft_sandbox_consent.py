"""The Microsoft sandbox's web sign-in and tenant consent, over real HTTPS, with MSAL's own
confidential client: registered redirect URIs, the client secret, a tenant that blocks user
consent, and the admin-consent endpoint that lifts the block for every user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import msal
import pytest
import requests

from maillink.providers.graph_api import CABundleSession
from maillink.sandbox.microsoft import MicrosoftSandbox

REP = "rep@contoso.example"
ADMIN = "it@contoso.example"
SECRET = "sandbox-web-secret"
CALLBACK = "https://maillink.contoso.example/oauth/microsoft/callback"
SCOPES = ["Mail.ReadBasic", "User.Read"]
# The web sign-in's answer comes in the query (docs/web-app.md says why), which MSAL warns about.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox(client_secret=SECRET) as sandbox:
        sandbox.add_mailbox(REP, "Rep")
        sandbox.add_mailbox(ADMIN, "IT")
        sandbox.make_admin(ADMIN)
        sandbox.register_redirect_uri(CALLBACK)
        sandbox.consent_as = REP
        yield sandbox


def web_app(ms: MicrosoftSandbox, secret: str = SECRET) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        ms.client_id,
        client_credential=secret,
        authority=ms.authority,
        instance_discovery=False,
        http_client=CABundleSession(ms.ca_bundle, 10),
    )


def follow(ms: MicrosoftSandbox, url: str) -> dict[str, str]:
    """The browser at the login host: its redirect's query (or the error page's JSON)."""
    answer = requests.get(url, verify=ms.ca_bundle, allow_redirects=False, timeout=10)
    if answer.status_code != 302:
        return {"page_status": str(answer.status_code), **answer.json()}
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}


def sign_in(
    ms: MicrosoftSandbox, app: msal.ClientApplication
) -> tuple[dict[str, Any], dict[str, Any]]:
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=CALLBACK)
    return flow, follow(ms, flow["auth_uri"])


def test_the_web_flow_with_a_registered_redirect_uri_and_the_client_secret(
    ms: MicrosoftSandbox,
) -> None:
    flow, answer = sign_in(ms, web_app(ms))
    assert answer["state"] == flow["state"] and answer["code"]
    result = web_app(ms).acquire_token_by_auth_code_flow(flow, answer, scopes=SCOPES)
    assert "access_token" in result, result
    assert {"Mail.ReadBasic", "User.Read"} <= set(result["scope"].split())


def test_a_wrong_client_secret_cannot_redeem_the_code(ms: MicrosoftSandbox) -> None:
    flow, answer = sign_in(ms, web_app(ms))
    result = web_app(ms, "not-the-secret").acquire_token_by_auth_code_flow(
        flow, answer, scopes=SCOPES
    )
    assert result["error"] == "invalid_client" and result["error_codes"] == [7000215]


def test_an_unregistered_redirect_uri_is_refused_on_the_login_page(ms: MicrosoftSandbox) -> None:
    app = web_app(ms)
    for uri in (
        CALLBACK + "/",
        "https://evil.example/oauth/microsoft/callback",
        "http://localhost:8080/oauth/microsoft/callback",  # loopback with a path: not registered
    ):
        flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=uri)
        page = follow(ms, flow["auth_uri"])
        assert page["page_status"] == "400" and page["error_codes"] == [50011], uri
    # MSAL's loopback flow (any port, no path) is still accepted
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri="http://localhost:8400")
    assert follow(ms, flow["auth_uri"])["code"]


def test_a_tenant_that_blocks_user_consent_refuses_users_until_an_admin_consents(
    ms: MicrosoftSandbox,
) -> None:
    ms.block_user_consent()
    flow, answer = sign_in(ms, web_app(ms))
    assert answer["error"] == "access_denied" and answer["state"] == flow["state"]
    assert answer["error_description"].startswith("AADSTS90093:")
    assert "code" not in answer

    # a tenant administrator may still consent for themself
    ms.consent_as = ADMIN
    assert "code" in sign_in(ms, web_app(ms))[1]

    # admin consent for the tenant: then every user's sign-in works
    consent = urlencode({"client_id": ms.client_id, "redirect_uri": CALLBACK, "state": "s-1"})
    granted = follow(ms, f"{ms.authority}/adminconsent?{consent}")
    assert granted == {
        "admin_consent": "True",
        "tenant": ms.identity.tenant_id,
        "state": "s-1",
    }
    assert ms.admin_consented
    ms.consent_as = REP
    flow, answer = sign_in(ms, web_app(ms))
    result = web_app(ms).acquire_token_by_auth_code_flow(flow, answer, scopes=SCOPES)
    assert "access_token" in result, result


def test_admin_consent_needs_an_administrator_and_a_registered_redirect_uri(
    ms: MicrosoftSandbox,
) -> None:
    def admin_consent(**params: str) -> dict[str, str]:
        query = {"client_id": ms.client_id, "redirect_uri": CALLBACK, "state": "s-2", **params}
        return follow(ms, f"{ms.authority}/adminconsent?{urlencode(query)}")

    ms.consent_as = REP  # not an administrator
    refused = admin_consent()
    assert refused["error"] == "access_denied" and refused["state"] == "s-2"
    assert refused["error_description"].startswith("AADSTS90094:")
    ms.consent_as = None  # the administrator cancels
    assert admin_consent()["error_description"].startswith("AADSTS65004:")
    assert not ms.admin_consented
    ms.consent_as = ADMIN
    assert admin_consent(redirect_uri="https://evil.example/cb")["error_codes"] == [50011]
    assert admin_consent(client_id="someone-else")["error_codes"] == [700016]
    assert not ms.admin_consented
    assert admin_consent()["admin_consent"] == "True"  # the v1 endpoint
    v2 = urlencode({"client_id": ms.client_id, "redirect_uri": CALLBACK, "state": "s-3"})
    assert follow(ms, f"{ms.authority}/v2.0/adminconsent?{v2}")["state"] == "s-3"
