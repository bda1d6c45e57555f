"""The Microsoft sandbox's app side: client credentials (MSAL's ConfidentialClientApplication),
the directory (/users, /groups, group members, paged), and app-token mail access with Entra ID's
and Exchange Online's refusals (permissions, the application access policy)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msal
import pytest
import requests

from maillink.providers.graph_api import CABundleSession
from maillink.sandbox.microsoft import MicrosoftSandbox

SECRET = "app-secret"
USERS = [f"user{i:03d}@contoso.example" for i in range(7)]


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox(client_secret=SECRET) as sandbox:
        for email in USERS:
            sandbox.add_mailbox(email)
        sandbox.add_message(
            USERS[0],
            "inbox",
            internet_message_id="<a@client.example>",
            subject="Hello",
            sender=("Ana", "ana@client.example"),
            to=[USERS[0]],
            received=datetime(2026, 1, 5, tzinfo=UTC),
        )
        yield sandbox


def token_endpoint(ms: MicrosoftSandbox) -> str:
    return f"{ms.authority}/oauth2/v2.0/token"


def client_token(ms: MicrosoftSandbox, **form: str) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_id": ms.client_id,
        "client_secret": SECRET,
        "scope": "https://graph.microsoft.com/.default",
    }
    data.update(form)
    return requests.post(token_endpoint(ms), data=data, verify=ms.ca_bundle, timeout=10)


def app_token(ms: MicrosoftSandbox) -> str:
    answer = client_token(ms)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def graph(ms: MicrosoftSandbox, token: str, path: str) -> requests.Response:
    url = path if path.startswith("https://") else f"{ms.graph_url}{path}"
    return requests.get(
        url, headers={"Authorization": f"Bearer {token}"}, verify=ms.ca_bundle, timeout=10
    )


def error_code(answer: requests.Response) -> Any:
    return answer.json()["error"]["code"]


def test_msal_gets_an_app_token_and_caches_it(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("User.Read.All")
    session = CABundleSession(ms.ca_bundle)  # its CA wins over REQUESTS_CA_BUNDLE
    client = msal.ConfidentialClientApplication(
        ms.client_id,
        client_credential=SECRET,
        authority=ms.authority,
        instance_discovery=False,
        http_client=session,
    )
    scopes = [f"{ms.graph_url.rsplit('/v1.0', 1)[0]}/.default"]
    first = client.acquire_token_for_client(scopes)
    second = client.acquire_token_for_client(scopes)
    assert first["access_token"] == second["access_token"]
    assert "refresh_token" not in first
    assert ms.meter.requests["identity.token"] == 1
    assert graph(ms, first["access_token"], "/users").status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        ({"client_secret": "wrong"}, 401, 7000215),
        ({"scope": "https://graph.microsoft.com/User.Read.All"}, 400, 1002012),
        ({"scope": "https://graph.microsoft.com/.default openid"}, 400, 1002012),
        ({"scope": "https://vault.azure.net/.default"}, 400, 500011),
    ],
)
def test_client_credentials_refusals(
    ms: MicrosoftSandbox, form: dict[str, str], status: int, code: int
) -> None:
    answer = client_token(ms, **form)
    assert answer.status_code == status
    assert answer.json()["error_codes"] == [code]
    assert answer.json()["error_description"].startswith(f"AADSTS{code}:")


def test_a_missing_secret_is_refused() -> None:
    with MicrosoftSandbox(client_secret=SECRET) as ms:
        data = {
            "grant_type": "client_credentials",
            "client_id": ms.client_id,
            "scope": "https://graph.microsoft.com/.default",
        }
        answer = requests.post(token_endpoint(ms), data=data, verify=ms.ca_bundle, timeout=10)
        assert answer.status_code == 401 and answer.json()["error_codes"] == [7000218]


def test_users_are_paged_with_next_links_and_select(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("User.Read.All")
    ms.disable_user(USERS[1])
    token = app_token(ms)
    url: str | None = "/users?$select=id,mail,accountEnabled&$top=3"
    seen: list[dict[str, Any]] = []
    pages = 0
    while url:
        answer = graph(ms, token, url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += body["value"]
        pages += 1
        url = body.get("@odata.nextLink")
    assert pages == 3 and [u["mail"] for u in seen] == USERS
    assert set(seen[0]) == {"id", "mail", "accountEnabled"}
    assert [u["accountEnabled"] for u in seen[:2]] == [True, False]
    assert seen[0]["id"] == ms.user_id(USERS[0])


def test_groups_by_name_and_their_members(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("GroupMember.Read.All")
    group = ms.add_group("Sales", USERS[:2])
    ms.add_group("Support", USERS[2:4])
    token = app_token(ms)
    found = graph(ms, token, "/groups?$filter=displayName eq 'Sales'").json()["value"]
    assert found == [{"id": group, "displayName": "Sales"}]
    members = graph(ms, token, f"/groups/{group}/members/microsoft.graph.user?$select=mail")
    assert [m["mail"] for m in members.json()["value"]] == USERS[:2]
    ms.remove_group_member(group, USERS[0])
    members = graph(ms, token, f"/groups/{group}/members/microsoft.graph.user")
    assert [m["mail"] for m in members.json()["value"]] == USERS[1:2]
    assert error_code(graph(ms, token, "/groups/nope/members/microsoft.graph.user")) == (
        "Request_ResourceNotFound"
    )


def test_the_directory_needs_application_permissions(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("Mail.ReadBasic.All")
    token = app_token(ms)
    for path in ("/users", f"/groups/{ms.add_group('Sales')}/members/microsoft.graph.user"):
        answer = graph(ms, token, path)
        assert answer.status_code == 403 and error_code(answer) == "Authorization_RequestDenied"
    delegated = ms.access_token(USERS[0])  # a user's own consent lists no directory
    assert graph(ms, delegated, "/users").status_code == 403


def test_app_tokens_read_mail_under_users_with_mail_read_basic_all(ms: MicrosoftSandbox) -> None:
    inbox = f"/users/{ms.user_id(USERS[0])}/mailFolders/inbox/messages?$select=subject"
    ms.grant_app_permissions("User.Read.All")
    without = graph(ms, app_token(ms), inbox)
    assert without.status_code == 403 and error_code(without) == "ErrorAccessDenied"
    ms.grant_app_permissions("Mail.ReadBasic.All")
    token = app_token(ms)
    answer = graph(ms, token, inbox)
    assert answer.status_code == 200 and answer.json()["value"][0]["subject"] == "Hello"
    by_address = graph(ms, token, f"/users/{USERS[0]}/mailFolders/inbox/messages?$select=subject")
    assert by_address.status_code == 200
    me = graph(ms, token, "/me/mailFolders/inbox/messages?$select=subject")
    assert me.status_code == 400 and "delegated" in me.json()["error"]["message"]


def test_an_application_access_policy_limits_the_app_to_a_group(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("Mail.ReadBasic.All", "User.Read.All")
    group = ms.add_group("Sales", USERS[:1])
    ms.restrict_app_access(group)
    token = app_token(ms)
    allowed = graph(ms, token, f"/users/{USERS[0]}/mailFolders/inbox/messages?$select=subject")
    assert allowed.status_code == 200
    denied = graph(ms, token, f"/users/{USERS[1]}/mailFolders/inbox/messages?$select=subject")
    assert denied.status_code == 403 and "AccessPolicy" in denied.json()["error"]["message"]
    assert graph(ms, token, "/users").status_code == 200  # the directory is not Exchange's
    ms.restrict_app_access(None)
    again = graph(ms, token, f"/users/{USERS[1]}/mailFolders/inbox/messages?$select=subject")
    assert again.status_code == 200


def test_revoked_permissions_drop_the_app_tokens(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("User.Read.All")
    token = app_token(ms)
    ms.revoke_app_permissions("User.Read.All")
    assert graph(ms, token, "/users").status_code == 401
    assert graph(ms, app_token(ms), "/users").status_code == 403


def test_a_removed_user_leaves_the_directory_and_its_groups(ms: MicrosoftSandbox) -> None:
    ms.grant_app_permissions("User.Read.All", "GroupMember.Read.All")
    group = ms.add_group("Sales", USERS[:2])
    ms.remove_user(USERS[0])
    token = app_token(ms)
    users = graph(ms, token, "/users?$top=999").json()["value"]
    assert USERS[0] not in [u["mail"] for u in users]
    members = graph(ms, token, f"/groups/{group}/members/microsoft.graph.user").json()["value"]
    assert [m["mail"] for m in members] == USERS[1:2]
