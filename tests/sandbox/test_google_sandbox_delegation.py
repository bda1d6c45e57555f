"""The Google sandbox's Workspace: service-account keys, domain-wide delegation (the JWT bearer
grant with `sub`), and the Admin SDK Directory's users.list, through real HTTP with google-auth
and google-api-python-client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from google.auth import crypt, jwt
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError

from maillink.sandbox.google import SCOPE_METADATA, GoogleSandbox
from maillink.sandbox.google.delegation import JWT_BEARER, SCOPE_DIRECTORY_USERS

ADMIN = "admin@acme.example"
REP = "rep@acme.example"
OUTSIDER = "someone@elsewhere.example"
# The assertions' times: the sandbox checks them against its clock (5 minutes of skew allowed).
NOW = int(time.time())


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        sandbox.workspace.add_user(ADMIN, admin=True)
        sandbox.workspace.add_user(REP)
        sandbox.add_mailbox(OUTSIDER)  # a Gmail user, not of the Workspace
        yield sandbox


@pytest.fixture
def key(google: GoogleSandbox) -> dict[str, Any]:
    made = google.workspace.create_service_account()
    google.workspace.delegate(made["client_id"], [SCOPE_METADATA, SCOPE_DIRECTORY_USERS])
    return made


def delegated(key: dict[str, Any], subject: str, scopes: list[str]) -> Any:
    return service_account.Credentials.from_service_account_info(
        key, scopes=scopes, subject=subject
    )


def assertion(key: dict[str, Any], **claims: Any) -> str:
    """A JWT bearer assertion as google-auth makes it, with `claims` changed."""
    now = NOW
    body = {
        "iss": key["client_email"],
        "aud": key["token_uri"],
        "scope": SCOPE_METADATA,
        "sub": REP,
        "iat": now,
        "exp": now + 3600,
    }
    body.update(claims)
    signer = crypt.RSASigner.from_service_account_info(key)
    return jwt.encode(signer, {k: v for k, v in body.items() if v is not None}).decode()


def token_request(google: GoogleSandbox, signed: str) -> requests.Response:
    return requests.post(
        google.token_uri, data={"grant_type": JWT_BEARER, "assertion": signed}, timeout=10
    )


def test_service_account_key_is_the_file_google_cloud_gives(
    google: GoogleSandbox, key: dict[str, Any]
) -> None:
    assert key["type"] == "service_account"
    assert key["token_uri"] == google.token_uri
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["client_email"].endswith(".iam.gserviceaccount.com")
    other = google.workspace.create_service_account("other")
    assert other["private_key"] != key["private_key"]
    assert other["client_id"] != key["client_id"]


def test_delegated_token_reads_the_subjects_mailbox(
    google: GoogleSandbox, key: dict[str, Any]
) -> None:
    credentials = delegated(key, REP, [SCOPE_METADATA])
    credentials.refresh(Request())
    gmail = build_from_document(
        get_static_doc("gmail", "v1"),
        http=AuthorizedHttp(credentials),
        client_options={"api_endpoint": google.api_endpoint},
    )
    profile = gmail.users().getProfile(userId="me").execute()
    assert profile["emailAddress"] == REP
    with pytest.raises(HttpError) as refused:
        gmail.users().getProfile(userId=ADMIN).execute()  # another user: not this token's
    assert refused.value.resp.status == 403


def test_directory_only_token_cannot_read_mail(google: GoogleSandbox, key: dict[str, Any]) -> None:
    credentials = delegated(key, REP, [SCOPE_DIRECTORY_USERS])
    credentials.refresh(Request())
    answer = requests.get(
        f"{google.api_endpoint}/gmail/v1/users/me/profile",
        headers={"Authorization": f"Bearer {credentials.token}"},
        timeout=10,
    )
    assert answer.status_code == 403
    assert answer.json()["error"]["errors"][0]["reason"] == "insufficientPermissions"


@pytest.mark.parametrize(
    ("setup", "subject", "status", "error"),
    [
        ("undelegated", REP, 401, "unauthorized_client"),
        ("directory_only", REP, 401, "unauthorized_client"),  # gmail.metadata not granted
        ("delegated", OUTSIDER, 400, "invalid_grant"),  # a mailbox outside the Workspace
        ("delegated", "ghost@acme.example", 400, "invalid_grant"),  # no such user
    ],
)
def test_token_endpoint_refuses_as_google_does(
    google: GoogleSandbox, setup: str, subject: str, status: int, error: str
) -> None:
    key = google.workspace.create_service_account()
    if setup == "directory_only":
        google.workspace.delegate(key["client_id"], [SCOPE_DIRECTORY_USERS])
    elif setup == "delegated":
        google.workspace.delegate(key["client_id"], [SCOPE_METADATA])
    answer = token_request(google, assertion(key, sub=subject))
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    with pytest.raises(RefreshError, match=error):  # google-auth reads it the same way
        delegated(key, subject, [SCOPE_METADATA]).refresh(Request())


def test_forged_or_stale_assertions_are_invalid_grants(
    google: GoogleSandbox, key: dict[str, Any]
) -> None:
    forger = google.workspace.create_service_account("forger")
    forged = dict(forger, client_email=key["client_email"], private_key_id=key["private_key_id"])
    now = NOW
    cases = {
        "signed by another key": assertion(forged),
        "expired": assertion(key, iat=now - 7200, exp=now - 3600),
        "too long-lived": assertion(key, exp=now + 7200),
        "issued in the future": assertion(key, iat=now + 3600, exp=now + 4000),
        "another audience": assertion(key, aud="https://example.com/token"),
        "unknown account": assertion(key, iss="nobody@x.iam.gserviceaccount.com"),
    }
    for case, signed in cases.items():
        answer = token_request(google, signed)
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant"), case
    tampered = assertion(key).split(".")
    tampered[1] = assertion(key, sub=ADMIN).split(".")[1]
    answer = token_request(google, ".".join(tampered))
    assert answer.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid JWT Signature.",
    }
    assert token_request(google, assertion(key)).status_code == 200


def test_a_user_removed_from_the_directory_loses_its_tokens(
    google: GoogleSandbox, key: dict[str, Any]
) -> None:
    credentials = delegated(key, REP, [SCOPE_METADATA])
    credentials.refresh(Request())
    google.workspace.remove_user(REP)
    answer = requests.get(
        f"{google.api_endpoint}/gmail/v1/users/me/profile",
        headers={"Authorization": f"Bearer {credentials.token}"},
        timeout=10,
    )
    assert answer.status_code == 401
    assert token_request(google, assertion(key)).json()["error"] == "invalid_grant"


def directory(google: GoogleSandbox, credentials: Any) -> Any:
    return build_from_document(
        get_static_doc("admin", "directory_v1"),
        http=AuthorizedHttp(credentials),
        client_options={"api_endpoint": google.directory_endpoint},
    )


def test_directory_lists_the_workspace_users_page_by_page(
    google: GoogleSandbox, key: dict[str, Any]
) -> None:
    for n in range(5):
        google.workspace.add_user(f"rep{n}@acme.example")
    google.workspace.add_user("rep9@acme.example", suspended=True)
    google.workspace.add_user("x@subsidiary.example")
    admin = directory(google, delegated(key, ADMIN, [SCOPE_DIRECTORY_USERS]))
    seen: list[dict[str, Any]] = []
    token = None
    pages = 0
    while True:
        page = (
            admin.users()
            .list(
                customer="my_customer",
                maxResults=3,
                pageToken=token,
                fields="nextPageToken,users(id,primaryEmail,suspended)",
            )
            .execute()
        )
        pages += 1
        seen += page.get("users", [])
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 3
    emails = [u["primaryEmail"] for u in seen]
    assert emails == sorted(emails) and len(emails) == 9
    assert {u["primaryEmail"] for u in seen if u["suspended"]} == {"rep9@acme.example"}
    assert google.workspace.user_id(REP) in {u["id"] for u in seen}
    by_domain = admin.users().list(domain="subsidiary.example").execute()
    assert [u["primaryEmail"] for u in by_domain["users"]] == ["x@subsidiary.example"]


def test_directory_refuses_non_admins_and_requests_without_customer(
    google: GoogleSandbox, key: dict[str, Any]
) -> None:
    rep = directory(google, delegated(key, REP, [SCOPE_DIRECTORY_USERS]))
    with pytest.raises(HttpError) as refused:
        rep.users().list(customer="my_customer").execute()
    assert refused.value.resp.status == 403
    admin = directory(google, delegated(key, ADMIN, [SCOPE_DIRECTORY_USERS]))
    with pytest.raises(HttpError) as bad:
        admin.users().list().execute()
    assert bad.value.resp.status == 400
    with pytest.raises(HttpError) as foreign:
        admin.users().list(domain="elsewhere.example").execute()
    assert foreign.value.resp.status == 403
    gmail_only = directory(google, delegated(key, ADMIN, [SCOPE_METADATA]))
    with pytest.raises(HttpError) as scope:
        gmail_only.users().list(customer="my_customer").execute()
    assert scope.value.resp.status == 403
