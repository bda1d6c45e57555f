"""The Google sandbox, driven through real HTTP by the real Google client libraries.

Every response kind is held against the schemas of Gmail's discovery document shipped with
google-api-python-client, so a field the sandbox invents (or mistypes) fails a test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import googleapiclient
import pytest
import requests
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import Flow
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest
from jsonschema import Draft202012Validator, ValidationError
from tests.opcount import lines_executed

from maillink.sandbox._server import Fault
from maillink.sandbox.google import SCOPE_METADATA, GoogleSandbox
from maillink.sandbox.google.mailbox import Mailbox

ME = "rep@example.com"
OTHER = "boss@example.com"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SYNC_HEADERS = [
    "From",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
]
LOOPBACK = "http://127.0.0.1:8765/"

# --- discovery schemas as JSON Schema -------------------------------------------------------

DISCOVERY = json.loads(
    (Path(googleapiclient.__file__).parent / "discovery_cache/documents/gmail.v1.json").read_text()
)


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A discovery schema ($ref, type, properties, items, format) as strict JSON Schema."""
    if "$ref" in schema:
        return {"$ref": f"#/$defs/{schema['$ref']}"}
    kind = schema.get("type")
    fmt = schema.get("format", "")
    if kind == "object":
        extra = schema.get("additionalProperties")
        return {
            "type": "object",
            "properties": {k: to_json_schema(v) for k, v in schema.get("properties", {}).items()},
            "additionalProperties": to_json_schema(extra) if extra else False,
        }
    if kind == "array":
        return {"type": "array", "items": to_json_schema(schema["items"])}
    if kind == "string":
        out: dict[str, Any] = {"type": "string"}
        if fmt in ("int64", "uint64"):
            out["pattern"] = r"^[0-9]+$" if fmt == "uint64" else r"^-?[0-9]+$"
        elif fmt == "byte":
            out["pattern"] = r"^[A-Za-z0-9+/_=-]*$"
        if "enum" in schema:
            out["enum"] = schema["enum"]
        return out
    if kind == "integer":
        bounds = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}.get(fmt)
        out = {"type": "integer"}
        if bounds:
            out["minimum"], out["maximum"] = bounds
        return out
    if kind in ("boolean", "number"):
        return {"type": kind}
    raise ValueError(f"unsupported discovery schema {schema}")


DEFS = {name: to_json_schema(schema) for name, schema in DISCOVERY["schemas"].items()}


def validate(name: str, body: object) -> None:
    Draft202012Validator({"$defs": DEFS, "$ref": f"#/$defs/{name}"}).validate(body)


GOOGLE_ERROR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "message", "errors", "status"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
                "errors": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["message", "domain", "reason"]},
                },
            },
        }
    },
}


def google_error(response: requests.Response, code: int, status: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body = response.json()
    Draft202012Validator(GOOGLE_ERROR).validate(body)
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    return body["error"]


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        sandbox.add_mailbox(ME, aliases=("sales@example.com",))
        sandbox.add_mailbox(OTHER)
        yield sandbox


def gmail(google: GoogleSandbox, email: str = ME) -> Any:
    credentials = Credentials(
        token=None,
        refresh_token=google.issue_refresh_token(email),
        client_id=google.client_id,
        client_secret=google.client_secret,
        token_uri=google.token_uri,
    )
    return build(
        "gmail",
        "v1",
        credentials=credentials,
        client_options={"api_endpoint": google.url},
        static_discovery=True,
        cache_discovery=False,
    )


def api(google: GoogleSandbox, email: str = ME) -> requests.Session:
    """A requests session with a fresh access token of `email`, for raw HTTP checks."""
    token = requests.post(
        google.token_uri,
        data={
            "grant_type": "refresh_token",
            "refresh_token": google.issue_refresh_token(email),
            "client_id": google.client_id,
            "client_secret": google.client_secret,
        },
        timeout=5,
    ).json()["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def deliver(
    google: GoogleSandbox, n: int, *, email: str = ME, thread_id: str | None = None
) -> list[str]:
    return [
        google.add_message(
            email,
            headers=[
                ("From", f"Client {i} <client{i}@acme.test>"),
                ("To", email),
                ("Subject", f"Quote {i}"),
                ("Date", (T0 + timedelta(minutes=i)).strftime("%a, %d %b %Y %H:%M:%S +0000")),
                ("Message-ID", f"<m{i}@acme.test>"),
                ("Received", "from mx.acme.test"),
            ],
            internal_date=T0 + timedelta(minutes=i),
            thread_id=thread_id,
            snippet=f"About quote {i}",
        )
        for i in range(n)
    ]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(google: GoogleSandbox, **overrides: str) -> requests.Response:
    params = {
        "client_id": google.client_id,
        "redirect_uri": LOOPBACK,
        "response_type": "code",
        "scope": f"openid email {SCOPE_METADATA}",
        "state": "xyz-state",
        "code_challenge_method": "S256",
        "access_type": "offline",
    }
    params.update(overrides)
    return requests.get(google.auth_uri, params=params, allow_redirects=False, timeout=5)


def redeem(google: GoogleSandbox, code: str, verifier: str, **overrides: str) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": LOOPBACK,
        "code_verifier": verifier,
        "client_id": google.client_id,
        "client_secret": google.client_secret,
    }
    data.update(overrides)
    return requests.post(google.token_uri, data=data, timeout=5)


def code_from(response: requests.Response) -> dict[str, list[str]]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(LOOPBACK)
    return parse_qs(urlsplit(location).query)


# --- the Gmail API through google-api-python-client -----------------------------------------


def test_get_profile_refreshes_the_token_and_reads_the_mailbox(google: GoogleSandbox) -> None:
    deliver(google, 3)
    profile = gmail(google).users().getProfile(userId="me").execute()
    validate("Profile", profile)
    assert profile == {
        "emailAddress": ME,
        "messagesTotal": 3,
        "threadsTotal": 3,
        "historyId": str(google.history_id(ME)),
    }
    assert google.meter.requests["oauth.token"] == 1
    assert google.meter.units["gmail.users.getProfile"] == 1


def test_messages_list_pages_newest_first_through_every_message(google: GoogleSandbox) -> None:
    ids = deliver(google, 250)
    service = gmail(google)
    seen, pages, token = [], 0, None
    while True:
        page = (
            service.users().messages().list(userId="me", maxResults=100, pageToken=token).execute()
        )
        validate("ListMessagesResponse", page)
        assert page["resultSizeEstimate"] == 250
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(ids))
    assert google.meter.requests["gmail.messages.list"] == 3
    assert google.meter.units["gmail.messages.list"] == 15


def test_messages_list_filters_by_label_and_hides_spam_and_trash(google: GoogleSandbox) -> None:
    inbox, sent = deliver(google, 2)
    google.add_labels(ME, sent, ("SENT",))
    google.add_message(ME, headers=[], internal_date=T0, label_ids=("SPAM",))
    service = gmail(google).users().messages()
    assert [
        m["id"] for m in service.list(userId="me", labelIds=["SENT"]).execute()["messages"]
    ] == [sent]
    assert len(service.list(userId="me").execute()["messages"]) == 2
    assert len(service.list(userId="me", includeSpamTrash=True).execute()["messages"]) == 3
    assert len(service.list(userId="me", labelIds=["SPAM"]).execute()["messages"]) == 1
    empty = service.list(userId="me", labelIds=["Label_9"]).execute()
    assert empty == {"resultSizeEstimate": 0}
    assert inbox != sent


def test_messages_get_metadata_filters_headers_case_insensitively(google: GoogleSandbox) -> None:
    (message_id,) = deliver(google, 1)
    messages = gmail(google).users().messages()
    message = messages.get(
        userId="me",
        id=message_id,
        format="metadata",
        metadataHeaders=[h.lower() for h in SYNC_HEADERS],
    ).execute()
    validate("Message", message)
    assert [h["name"] for h in message["payload"]["headers"]] == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
    ]
    assert message["internalDate"] == str(int(T0.timestamp() * 1000))
    assert message["threadId"] == message_id
    assert message["labelIds"] == ["INBOX"]
    assert message["snippet"] == "About quote 0"
    every = messages.get(userId="me", id=message_id, format="metadata").execute()
    assert len(every["payload"]["headers"]) == 6
    minimal = messages.get(userId="me", id=message_id, format="minimal").execute()
    validate("Message", minimal)
    assert "payload" not in minimal
    assert google.meter.units["gmail.messages.get"] == 15


def test_messages_get_of_an_unknown_or_deleted_id_answers_404(google: GoogleSandbox) -> None:
    (message_id,) = deliver(google, 1)
    google.delete_message(ME, message_id)
    with pytest.raises(HttpError) as raised:
        gmail(google).users().messages().get(userId="me", id=message_id, format="minimal").execute()
    assert raised.value.resp.status == 404
    google_error(
        api(google).get(f"{google.url}/gmail/v1/users/me/messages/nope?format=minimal"),
        404,
        "NOT_FOUND",
    )


def test_threads_get_lists_the_thread_oldest_first(google: GoogleSandbox) -> None:
    (first,) = deliver(google, 1)
    google.add_message(
        ME,
        headers=[("Subject", "late reply")],
        internal_date=T0 + timedelta(days=2),
        thread_id=first,
    )
    google.add_message(
        ME,
        headers=[("Subject", "Re: early")],
        internal_date=T0 + timedelta(hours=1),
        thread_id=first,
    )
    thread = (
        gmail(google)
        .users()
        .threads()
        .get(userId="me", id=first, format="metadata", metadataHeaders=["Subject"])
        .execute()
    )
    validate("Thread", thread)
    assert thread["id"] == first
    assert [m["payload"]["headers"][0]["value"] for m in thread["messages"]] == [
        "Quote 0",
        "Re: early",
        "late reply",
    ]
    assert thread["historyId"] == str(google.history_id(ME))
    assert google.meter.units["gmail.threads.get"] == 10
    assert gmail(google).users().getProfile(userId="me").execute()["threadsTotal"] == 1


def test_history_list_pages_through_changes_filtered_by_type(google: GoogleSandbox) -> None:
    service = gmail(google)
    start = service.users().getProfile(userId="me").execute()["historyId"]
    ids = deliver(google, 5)
    google.add_labels(ME, ids[0], ("SENT", "INBOX"))
    google.remove_labels(ME, ids[1], ("INBOX",))
    google.delete_message(ME, ids[2])

    records, token, pages = [], None, 0
    while True:
        page = (
            service.users()
            .history()
            .list(userId="me", startHistoryId=start, maxResults=2, pageToken=token)
            .execute()
        )
        validate("ListHistoryResponse", page)
        records += page["history"]
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 4 and len(records) == 8
    assert page["historyId"] == str(google.history_id(ME))
    assert [int(r["id"]) for r in records] == sorted(int(r["id"]) for r in records)
    assert [r["messagesAdded"][0]["message"]["id"] for r in records[:5]] == ids
    assert records[5]["labelsAdded"] == [
        {
            "message": {"id": ids[0], "threadId": ids[0], "labelIds": ["INBOX", "SENT"]},
            "labelIds": ["SENT"],
        }
    ]
    assert records[6]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    assert records[7]["messagesDeleted"][0]["message"]["id"] == ids[2]

    typed = (
        service.users()
        .history()
        .list(userId="me", startHistoryId=start, historyTypes=["labelAdded", "messageDeleted"])
        .execute()
    )
    assert [set(r) - {"id", "messages"} for r in typed["history"]] == [
        {"labelsAdded"},
        {"messagesDeleted"},
    ]
    sent = (
        service.users().history().list(userId="me", startHistoryId=start, labelId="SENT").execute()
    )
    assert [r["id"] for r in sent["history"]] == [records[5]["id"]]


def test_history_from_the_current_id_is_empty_with_the_current_id(google: GoogleSandbox) -> None:
    deliver(google, 2)
    current = str(google.history_id(ME))
    page = gmail(google).users().history().list(userId="me", startHistoryId=current).execute()
    validate("ListHistoryResponse", page)
    assert page == {"historyId": current}
    assert google.meter.units["gmail.history.list"] == 2


def test_history_from_before_expiry_answers_404(google: GoogleSandbox) -> None:
    service = gmail(google)
    start = service.users().getProfile(userId="me").execute()["historyId"]
    deliver(google, 2)
    google.expire_history(ME)
    with pytest.raises(HttpError) as raised:
        service.users().history().list(userId="me", startHistoryId=start).execute()
    assert raised.value.resp.status == 404
    error = google_error(
        api(google).get(
            f"{google.url}/gmail/v1/users/me/history", params={"startHistoryId": start}
        ),
        404,
        "NOT_FOUND",
    )
    assert error["message"] == "Requested entity was not found."
    after = (
        service.users()
        .history()
        .list(userId="me", startHistoryId=str(google.history_id(ME)))
        .execute()
    )
    assert "history" not in after
    deliver(google, 1)
    assert (
        len(
            service.users()
            .history()
            .list(userId="me", startHistoryId=after["historyId"])
            .execute()["history"]
        )
        == 1
    )


def test_search_query_is_refused_under_the_metadata_scope(google: GoogleSandbox) -> None:
    with pytest.raises(HttpError) as raised:
        gmail(google).users().messages().list(userId="me", q="after:2025/01/01").execute()
    assert raised.value.resp.status == 403
    assert "Metadata scope does not support 'q' parameter" in str(raised.value)


@pytest.mark.parametrize("fmt", ["full", "raw", None])
def test_full_and_raw_formats_are_refused_under_the_metadata_scope(
    google: GoogleSandbox, fmt: str | None
) -> None:
    (message_id,) = deliver(google, 1)
    params = {"format": fmt} if fmt else {}
    error = google_error(
        api(google).get(f"{google.url}/gmail/v1/users/me/messages/{message_id}", params=params),
        403,
        "PERMISSION_DENIED",
    )
    assert error["message"] == f"Metadata scope doesn't allow format {(fmt or 'full').upper()}"


def test_revoked_grant_gets_401_then_invalid_grant_on_refresh(google: GoogleSandbox) -> None:
    service = gmail(google)
    service.users().getProfile(userId="me").execute()
    session = api(google)
    google.revoke(ME)
    with pytest.raises(RefreshError) as raised:  # 401, then the client refreshes: invalid_grant
        service.users().getProfile(userId="me").execute()
    assert "invalid_grant" in str(raised.value)
    assert "Token has been expired or revoked." in str(raised.value)
    response = session.get(f"{google.url}/gmail/v1/users/me/profile")
    error = google_error(response, 401, "UNAUTHENTICATED")
    assert error["errors"][0]["reason"] == "authError"
    assert "invalid_token" in response.headers["WWW-Authenticate"]


def test_expired_access_token_is_refreshed_by_the_client_library(google: GoogleSandbox) -> None:
    service = gmail(google)
    service.users().getProfile(userId="me").execute()
    google.expire_access_tokens(ME)
    assert service.users().getProfile(userId="me").execute()["emailAddress"] == ME
    assert google.meter.statuses[401] == 1
    assert google.meter.requests["oauth.token"] == 2


def test_requests_without_a_token_or_for_another_mailbox_are_refused(google: GoogleSandbox) -> None:
    google_error(
        requests.get(f"{google.url}/gmail/v1/users/me/profile", timeout=5), 401, "UNAUTHENTICATED"
    )
    session = api(google)
    assert session.get(f"{google.url}/gmail/v1/users/{ME.upper()}/profile").status_code == 200
    google_error(
        session.get(f"{google.url}/gmail/v1/users/{OTHER}/profile"), 403, "PERMISSION_DENIED"
    )
    openid_only = requests.post(
        google.token_uri,
        data={
            "grant_type": "refresh_token",
            "refresh_token": google.issue_refresh_token(ME, scopes=("openid", "email")),
            "client_id": google.client_id,
            "client_secret": google.client_secret,
        },
        timeout=5,
    ).json()["access_token"]
    error = google_error(
        requests.get(
            f"{google.url}/gmail/v1/users/me/profile",
            headers={"Authorization": f"Bearer {openid_only}"},
            timeout=5,
        ),
        403,
        "PERMISSION_DENIED",
    )
    assert error["errors"][0]["reason"] == "insufficientPermissions"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("messages", {"maxResults": "many"}),
        ("messages", {"maxResults": "0"}),
        ("messages", {"pageToken": "not-a-token"}),
        ("messages", {"includeSpamTrash": "maybe"}),
        ("messages", {"labelId": "INBOX"}),
        ("messages/x", {"format": "html"}),
        ("history", {}),
        ("history", {"startHistoryId": "-5"}),
        ("history", {"startHistoryId": "1", "historyTypes": "messageMoved"}),
        ("history", {"startHistoryId": "1", "pageToken": "eyJ4Ijox"}),
        ("profile", {"alt": "proto"}),
    ],
)
def test_bad_parameters_answer_400_in_googles_shape(
    google: GoogleSandbox, path: str, params: dict[str, str]
) -> None:
    google_error(
        api(google).get(f"{google.url}/gmail/v1/users/me/{path}", params=params),
        400,
        "INVALID_ARGUMENT",
    )
    assert google.meter.statuses[500] == 0


def test_unknown_routes_answer_in_googles_shape(google: GoogleSandbox) -> None:
    google_error(api(google).get(f"{google.url}/gmail/v1/users/me/drafts/nope"), 404, "NOT_FOUND")


# --- batch ----------------------------------------------------------------------------------


def test_batch_of_50_is_one_http_request_costing_50_calls(google: GoogleSandbox) -> None:
    ids = deliver(google, 50)
    service = gmail(google)
    service.users().getProfile(userId="me").execute()
    google.meter.reset()
    answers: dict[str, Any] = {}

    def collect(request_id: str, response: Any, exception: Exception | None) -> None:
        assert exception is None
        answers[request_id] = response

    batch = BatchHttpRequest(callback=collect, batch_uri=google.batch_uri)
    for message_id in ids:
        batch.add(
            service.users()
            .messages()
            .get(userId="me", id=message_id, format="metadata", metadataHeaders=SYNC_HEADERS),
            request_id=message_id,
        )
    batch.execute()
    assert set(answers) == set(ids)
    for message_id, message in answers.items():
        validate("Message", message)
        assert message["id"] == message_id
    assert google.meter.requests["http"] == 1
    assert google.meter.requests["gmail.messages.get"] == 50
    assert google.meter.units["gmail.messages.get"] == 250


def test_batch_parts_with_an_expired_token_get_401_and_the_client_resends_them(
    google: GoogleSandbox,
) -> None:
    ids = deliver(google, 3)
    service = gmail(google)
    service.users().getProfile(userId=ME).execute()
    google.expire_access_tokens(ME)
    answers: list[Any] = []
    batch = BatchHttpRequest(
        callback=lambda rid, resp, exc: answers.append(exc or resp), batch_uri=google.batch_uri
    )
    for message_id in ids:
        batch.add(service.users().messages().get(userId=ME, id=message_id, format="minimal"))
    batch.execute()
    assert [answer["id"] for answer in answers] == ids
    assert google.meter.statuses[401] == 3
    assert google.meter.requests["gmail.batch"] == 2
    assert google.meter.units["gmail.messages.get"] == 15


def test_fault_on_one_batch_part_answers_429_inside_a_200_batch(google: GoogleSandbox) -> None:
    ids = deliver(google, 5)
    service = gmail(google)
    service.users().getProfile(userId="me").execute()
    google.faults.add(
        Fault(
            path=rf"^/gmail/v1/users/me/messages/{ids[2]}$",
            status=429,
            headers={"Retry-After": "7"},
            body=json.dumps(
                {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
            ),
        )
    )
    outcomes: dict[str, Any] = {}
    batch = BatchHttpRequest(
        callback=lambda rid, resp, exc: outcomes.__setitem__(rid, exc or resp),
        batch_uri=google.batch_uri,
    )
    for message_id in ids:
        batch.add(
            service.users().messages().get(userId="me", id=message_id, format="minimal"),
            request_id=message_id,
        )
    batch.execute()
    failed = outcomes.pop(ids[2])
    assert isinstance(failed, HttpError) and failed.resp.status == 429
    assert failed.resp["retry-after"] == "7"
    assert all(isinstance(answer, dict) for answer in outcomes.values())
    assert google.meter.statuses[429] == 1
    assert google.meter.requests["gmail.messages.get"] == 4


def batch_body(boundary: str, paths: list[str], auth: str | None = None) -> str:
    parts = []
    for i, path in enumerate(paths):
        inner = f"GET {path} HTTP/1.1\r\n" + (f"Authorization: {auth}\r\n" if auth else "")
        parts.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n\r\n{inner}\r\n"
        )
    return "".join(parts) + f"--{boundary}--\r\n"


def test_hand_written_batch_uses_the_outer_token_and_answers_each_part(
    google: GoogleSandbox,
) -> None:
    (message_id,) = deliver(google, 1)
    session = api(google)
    response = session.post(
        google.batch_uri,
        data=batch_body(
            "xyz",
            [
                f"/gmail/v1/users/me/messages/{message_id}?format=minimal",
                "/gmail/v1/users/me/messages/missing?format=minimal",
                f"{google.url}/gmail/v1/users/me/profile",
            ],
        ),
        headers={"Content-Type": "multipart/mixed; boundary=xyz"},
    )
    assert response.status_code == 200
    boundary = response.headers["Content-Type"].split("boundary=")[1]
    parts = [p for p in response.text.split(f"--{boundary}") if p.strip() not in ("", "--")]
    assert len(parts) == 3
    heads = [p.split("\r\n\r\n")[0] for p in parts]
    statuses = [p.split("\r\n\r\n")[1].splitlines()[0] for p in parts]
    assert [h.splitlines()[-1] for h in heads] == [
        f"Content-ID: <response-item{i}>" for i in range(3)
    ]
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 404 NOT FOUND", "HTTP/1.1 200 OK"]
    validate("Profile", json.loads(parts[2].split("\r\n\r\n", 2)[2]))


def test_batch_over_100_parts_is_refused(google: GoogleSandbox) -> None:
    response = api(google).post(
        google.batch_uri,
        data=batch_body("b", ["/gmail/v1/users/me/profile"] * 101),
        headers={"Content-Type": "multipart/mixed; boundary=b"},
    )
    google_error(response, 400, "INVALID_ARGUMENT")
    assert google.meter.requests["gmail.users.getProfile"] == 0


def test_reset_on_a_batch_part_drops_the_batch_connection(google: GoogleSandbox) -> None:
    google.faults.add(Fault(path=r"^/gmail/v1/users/me/profile$", action="reset"))
    with pytest.raises(requests.ConnectionError):
        api(google).post(
            google.batch_uri,
            data=batch_body("b", ["/gmail/v1/users/me/profile"]),
            headers={"Content-Type": "multipart/mixed; boundary=b"},
        )


# --- faults and quota -----------------------------------------------------------------------


def test_injected_429_reaches_the_client_with_retry_after(google: GoogleSandbox) -> None:
    service = gmail(google)
    google.faults.add(
        Fault(path=r"/profile$", status=429, headers={"Retry-After": "3"}, body='{"error": {}}')
    )
    with pytest.raises(HttpError) as raised:
        service.users().getProfile(userId="me").execute()
    assert raised.value.resp.status == 429
    assert raised.value.resp["retry-after"] == "3"
    assert service.users().getProfile(userId="me").execute()["emailAddress"] == ME


def test_injected_503_reaches_the_client(google: GoogleSandbox) -> None:
    google.faults.add(Fault(path=r"/messages$", status=503, body="backend unavailable"))
    with pytest.raises(HttpError) as raised:
        gmail(google).users().messages().list(userId="me").execute()
    assert raised.value.resp.status == 503
    assert google.meter.statuses[503] == 1


def test_injected_connection_reset_drops_the_connection(google: GoogleSandbox) -> None:
    session = api(google)
    google.faults.add(Fault(path=r"/profile$", action="reset"))
    with pytest.raises(requests.ConnectionError):
        session.get(f"{google.url}/gmail/v1/users/me/profile")
    assert session.get(f"{google.url}/gmail/v1/users/me/profile").status_code == 200


def test_quota_exceeded_answers_429_resource_exhausted_with_retry_after() -> None:
    with GoogleSandbox(quota_units_per_second=10) as google:
        google.add_mailbox(ME)
        (message_id,) = deliver(google, 1)
        session = api(google)
        url = f"{google.url}/gmail/v1/users/me/messages/{message_id}?format=minimal"
        assert [session.get(url).status_code for _ in range(2)] == [200, 200]
        response = session.get(url)
        error = google_error(response, 429, "RESOURCE_EXHAUSTED")
        assert error["errors"][0]["reason"] == "rateLimitExceeded"
        assert error["message"].startswith("Quota exceeded for quota metric 'Queries'")
        assert int(response.headers["Retry-After"]) >= 1
        assert google.meter.statuses[429] == 1
        assert google.meter.units["gmail.messages.get"] == 10
        assert google.meter.requests["gmail.messages.get"] == 3


# --- OAuth ----------------------------------------------------------------------------------


def test_code_flow_with_pkce_issues_tokens_that_read_the_mailbox(google: GoogleSandbox) -> None:
    google.consent_as = ME
    verifier, challenge = pkce()
    query = code_from(authorize(google, code_challenge=challenge))
    assert query["state"] == ["xyz-state"]
    assert query["scope"] == [f"openid email {SCOPE_METADATA}"]
    tokens = redeem(google, query["code"][0], verifier)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["expires_in"] == 3599 and body["token_type"] == "Bearer"
    assert set(body) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
    profile = requests.get(
        f"{google.url}/gmail/v1/users/me/profile",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=5,
    ).json()
    assert profile["emailAddress"] == ME
    refreshed = requests.post(
        google.token_uri,
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        auth=(google.client_id, google.client_secret),
        timeout=5,
    ).json()
    assert "refresh_token" not in refreshed and refreshed["access_token"] != body["access_token"]


def test_wrong_code_verifier_is_invalid_grant(google: GoogleSandbox) -> None:
    google.consent_as = ME
    _, challenge = pkce()
    code = code_from(authorize(google, code_challenge=challenge))["code"][0]
    response = redeem(google, code, pkce()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_reused_code_is_invalid_grant(google: GoogleSandbox) -> None:
    google.consent_as = ME
    verifier, challenge = pkce()
    code = code_from(authorize(google, code_challenge=challenge))["code"][0]
    assert redeem(google, code, verifier).status_code == 200
    again = redeem(google, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_token_endpoint_checks_client_and_redirect_uri(google: GoogleSandbox) -> None:
    google.consent_as = ME
    verifier, challenge = pkce()
    code = code_from(authorize(google, code_challenge=challenge))["code"][0]
    wrong_secret = redeem(google, code, verifier, client_secret="guess")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    moved = redeem(google, code, verifier, redirect_uri="http://127.0.0.1:9999/")
    assert moved.status_code == 400 and moved.json()["error"] == "redirect_uri_mismatch"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "plain",
        },
        {
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "redirect_uri": "https://evil.test/cb",
        },
        {
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "scope": "https://mail.google.com/",
        },
        {"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "response_type": "token"},
    ],
    ids=["no-pkce", "plain-pkce", "remote-redirect", "unsupported-scope", "implicit-flow"],
)
def test_bad_authorization_requests_get_an_error_page(
    google: GoogleSandbox, overrides: dict[str, str]
) -> None:
    google.consent_as = ME
    response = authorize(google, **overrides)
    assert response.status_code == 400
    assert "Error 400" in response.text


def test_unknown_client_gets_an_error_page(google: GoogleSandbox) -> None:
    assert authorize(google, client_id="stranger", code_challenge=pkce()[1]).status_code == 401


def test_denied_consent_redirects_with_access_denied(google: GoogleSandbox) -> None:
    google.consent_as = None
    query = code_from(authorize(google, code_challenge=pkce()[1]))
    assert query == {"state": ["xyz-state"], "error": ["access_denied"]}


def test_google_auth_oauthlib_flow_completes_against_the_sandbox(
    google: GoogleSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # oauthlib wants https token URIs
    google.consent_as = OTHER
    flow = Flow.from_client_config(
        google.client_config(), scopes=[SCOPE_METADATA], redirect_uri=LOOPBACK
    )
    url, state = flow.authorization_url(access_type="offline", prompt="consent")
    query = code_from(requests.get(url, allow_redirects=False, timeout=5))
    assert query["state"] == [state]
    flow.fetch_token(code=query["code"][0])
    service = build(
        "gmail",
        "v1",
        credentials=flow.credentials,
        client_options={"api_endpoint": google.url},
        static_discovery=True,
        cache_discovery=False,
    )
    assert service.users().getProfile(userId="me").execute()["emailAddress"] == OTHER


# --- schemas and scale ----------------------------------------------------------------------


def test_schema_check_rejects_invented_or_mistyped_fields() -> None:
    message = {"id": "1", "threadId": "1", "internalDate": "1700000000000"}
    validate("Message", message)
    with pytest.raises(ValidationError):
        validate("Message", {**message, "inventedField": True})
    with pytest.raises(ValidationError):
        validate("Message", {**message, "internalDate": 1700000000000})
    with pytest.raises(ValidationError):
        validate("ListHistoryResponse", {"history": [{"id": "5", "messagesMoved": []}]})


@pytest.fixture(scope="module")
def big_google() -> Iterator[tuple[GoogleSandbox, str]]:
    """A mailbox of 100,000 messages in 20,000 threads, and the history id before them."""
    with GoogleSandbox() as sandbox:
        sandbox.add_mailbox(ME)
        start = str(sandbox.history_id(ME))
        thread = None
        for i in range(100_000):
            at = T0 - timedelta(
                minutes=(i * 7919) % 100_000
            )  # out of order, as a generator may add
            message_id = sandbox.add_message(
                ME,
                headers=[("Subject", "s")],
                internal_date=at,
                thread_id=thread if i % 5 else None,
            )
            thread = message_id if i % 5 == 0 else thread
        yield sandbox, start


def test_a_100k_message_mailbox_pages_through_list_and_history(
    big_google: tuple[GoogleSandbox, str],
) -> None:
    google, start = big_google
    session = api(google)
    base = f"{google.url}/gmail/v1/users/me"
    listed: list[int] = []
    params: dict[str, Any] = {"maxResults": 500, "prettyPrint": "false"}
    while True:
        page = session.get(f"{base}/messages", params=params).json()
        listed += [int(m["id"], 16) for m in page["messages"]]
        if "nextPageToken" not in page:
            break
        params["pageToken"] = page["nextPageToken"]
    assert len(set(listed)) == 100_000

    added = 0
    params = {"maxResults": 500, "startHistoryId": start, "historyTypes": "messageAdded"}
    while True:
        page = session.get(f"{base}/history", params=params).json()
        added += len(page["history"])
        if "nextPageToken" not in page:
            break
        params["pageToken"] = page["nextPageToken"]
    assert added == 100_000
    assert page["historyId"] == str(google.history_id(ME))
    first_thread = format(min(listed), "x")
    thread = session.get(f"{base}/threads/{first_thread}", params={"format": "minimal"}).json()
    assert len(thread["messages"]) == 5


def test_deep_pages_cost_no_more_than_the_first() -> None:
    mailbox = Mailbox(ME)
    for i in range(100_000):
        mailbox.add(
            f"{i:x}",
            i,
            headers=(),
            internal_ms=(i * 7919) % 100_000,
            thread_id=None,
            label_ids=("INBOX",),
            snippet="",
            size_estimate=1,
        )
    start = mailbox.oldest_start
    _, deep_key = mailbox.list_page((), False, None, 99_000)
    _, deep_after = mailbox.history_page(start, (), None, None, 99_000)

    def cost(call: Any) -> int:
        """The work of one page: lines of the mailbox's code executed (no clock involved)."""
        return lines_executed(call, Mailbox)

    first_list = cost(lambda: mailbox.list_page(("INBOX",), False, None, 500))
    deep_list = cost(lambda: mailbox.list_page(("INBOX",), False, deep_key, 500))
    first_history = cost(lambda: mailbox.history_page(start, ("messageAdded",), None, None, 500))
    deep_history = cost(
        lambda: mailbox.history_page(start, ("messageAdded",), None, deep_after, 500)
    )
    assert deep_list < 10 * first_list + 100
    assert deep_history < 10 * first_history + 100
