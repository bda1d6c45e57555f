"""The Microsoft sandbox, over real HTTPS, held against what the Graph and identity docs say.

Message JSON is validated against a schema transcribed from the v1.0 `message` resource
(property names and types; anything the sandbox invents fails), collections against the
documented @odata annotations, errors against Graph's and Entra ID's error shapes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from jsonschema import Draft202012Validator

from maillink.sandbox._server import Fault
from maillink.sandbox.microsoft import MicrosoftSandbox

ME = "rep@contoso.example"
OTHER = "boss@contoso.example"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
HEADERS = "subject,from,toRecipients,receivedDateTime,conversationId,internetMessageId"

# --- schemas from the docs ------------------------------------------------------------------

RECIPIENT = {
    "type": "object",
    "required": ["emailAddress"],
    "additionalProperties": False,
    "properties": {
        "emailAddress": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": ["string", "null"]},
                "address": {"type": ["string", "null"]},
            },
        }
    },
}
RECIPIENTS = {"type": "array", "items": RECIPIENT}
DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"}
ITEM_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"contentType": {"enum": ["text", "html"]}, "content": {"type": "string"}},
}
MESSAGE = {
    "type": "object",
    "required": ["id"],
    "additionalProperties": False,
    "properties": {
        "@odata.type": {"const": "#microsoft.graph.message"},
        "@odata.etag": {"type": "string", "pattern": '^W/"'},
        "@removed": {
            "type": "object",
            "required": ["reason"],
            "properties": {"reason": {"enum": ["changed", "deleted"]}},
        },
        "id": {"type": "string", "minLength": 1},
        "bccRecipients": RECIPIENTS,
        "body": ITEM_BODY,
        "bodyPreview": {"type": "string"},
        "categories": {"type": "array", "items": {"type": "string"}},
        "ccRecipients": RECIPIENTS,
        "changeKey": {"type": "string"},
        "conversationId": {"type": "string"},
        "conversationIndex": {"type": "string", "contentEncoding": "base64"},
        "createdDateTime": DATE,
        "flag": {
            "type": "object",
            "properties": {"flagStatus": {"enum": ["notFlagged", "complete", "flagged"]}},
        },
        "from": {"oneOf": [RECIPIENT, {"type": "null"}]},
        "hasAttachments": {"type": "boolean"},
        "importance": {"enum": ["low", "normal", "high"]},
        "inferenceClassification": {"enum": ["focused", "other"]},
        "internetMessageHeaders": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["name", "value"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "internetMessageId": {"type": ["string", "null"]},
        "isDeliveryReceiptRequested": {"type": ["boolean", "null"]},
        "isDraft": {"type": "boolean"},
        "isRead": {"type": "boolean"},
        "isReadReceiptRequested": {"type": ["boolean", "null"]},
        "lastModifiedDateTime": DATE,
        "parentFolderId": {"type": "string"},
        "receivedDateTime": DATE,
        "replyTo": RECIPIENTS,
        "sender": {"oneOf": [RECIPIENT, {"type": "null"}]},
        "sentDateTime": DATE,
        "subject": {"type": ["string", "null"]},
        "toRecipients": RECIPIENTS,
        "uniqueBody": ITEM_BODY,
        "webLink": {"type": "string"},
    },
}
COLLECTION = {
    "type": "object",
    "required": ["@odata.context", "value"],
    "additionalProperties": False,
    "properties": {
        "@odata.context": {"type": "string"},
        "@odata.nextLink": {"type": "string"},
        "@odata.deltaLink": {"type": "string"},
        "@odata.count": {"type": "integer"},
        "value": {"type": "array", "items": MESSAGE},
    },
}
DELTA_PAGE = {
    **COLLECTION,
    "oneOf": [{"required": ["@odata.nextLink"]}, {"required": ["@odata.deltaLink"]}],
}
GRAPH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "innerError": {"type": "object"},
            },
        }
    },
}
AAD_ERROR = {
    "type": "object",
    "required": [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
    ],
    "properties": {
        "error": {"type": "string"},
        "error_description": {"type": "string", "pattern": "^AADSTS\\d+: "},
        "error_codes": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    },
}
TOKEN = {
    "type": "object",
    "required": [
        "token_type",
        "scope",
        "expires_in",
        "access_token",
        "refresh_token",
        "id_token",
        "client_info",
    ],
    "properties": {"token_type": {"const": "Bearer"}, "expires_in": {"type": "integer"}},
}


def valid(schema: dict[str, Any], body: Any) -> Any:
    Draft202012Validator(schema).validate(body)
    return body


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox(filtered_delta_cap=3) as sandbox:
        sandbox.add_mailbox(ME, "Rep One")
        sandbox.add_mailbox(OTHER, "The Boss")
        sandbox.consent_as = ME
        yield sandbox


class Graph:
    def __init__(
        self, ms: MicrosoftSandbox, scopes: tuple[str, ...] = ("Mail.ReadBasic", "User.Read")
    ):
        self.ms = ms
        self.token = ms.access_token(ME, scopes)
        self.prefer = 'odata.maxpagesize=2, IdType="ImmutableId"'

    def get(self, url: str, **params: str) -> requests.Response:
        if not url.startswith("https://"):
            url = self.ms.graph_url + url
        headers = {"Authorization": f"Bearer {self.token}", "Prefer": self.prefer}
        return requests.get(
            url, params=params or None, headers=headers, verify=self.ms.ca_bundle, timeout=10
        )

    def delta(
        self, folder: str = "inbox", *, link: str | None = None, **params: str
    ) -> list[dict[str, Any]]:
        """Every page of a delta round (the first with `params`, or from `link`), validated."""
        first = link or f"/me/mailFolders/{folder}/messages/delta"
        pages = [valid(DELTA_PAGE, self.get(first, **({} if link else params)).json())]
        while "@odata.nextLink" in pages[-1]:
            pages.append(valid(DELTA_PAGE, self.get(pages[-1]["@odata.nextLink"]).json()))
        return pages


def items(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for page in pages for item in page["value"]]


def add(ms: MicrosoftSandbox, n: int, when: datetime, folder: str = "inbox", **kwargs: Any) -> str:
    return ms.add_message(
        ME,
        folder,
        internet_message_id=f"<m{n}@client.example>",
        subject=f"Quote {n}",
        sender=("Ana", "ana@client.example"),
        to=[ME],
        received=when,
        **kwargs,
    )


# --- TLS and identity ------------------------------------------------------------------------


def test_served_over_tls_that_only_the_throwaway_ca_vouches_for(ms: MicrosoftSandbox) -> None:
    discovery = f"{ms.authority}/v2.0/.well-known/openid-configuration"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(discovery, verify=requests.certs.where(), timeout=10)
    assert requests.get(discovery, verify=ms.ca_bundle, timeout=10).status_code == 200
    assert ms.authority.startswith("https://127.0.0.1:") and ms.graph_url.startswith(
        "https://127.0.0.1:"
    )


def test_openid_configuration_names_every_endpoint_msal_uses(ms: MicrosoftSandbox) -> None:
    config = requests.get(
        f"{ms.authority}/v2.0/.well-known/openid-configuration", verify=ms.ca_bundle, timeout=10
    ).json()
    for key in ("authorization_endpoint", "token_endpoint", "device_authorization_endpoint"):
        assert config[key].startswith(ms.authority + "/oauth2/v2.0/")
    assert config["issuer"].endswith(f"/{ms.identity.tenant_id}/v2.0")
    assert "form_post" in config["response_modes_supported"]


def authorize(ms: MicrosoftSandbox, **params: str) -> requests.Response:
    verifier = secrets.token_urlsafe(32)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = {
        "client_id": ms.client_id,
        "response_type": "code",
        "redirect_uri": "http://localhost:8400",
        "scope": "Mail.ReadBasic User.Read openid offline_access",
        "state": "st4te",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    query.update(params)
    response = requests.get(
        f"{ms.authority}/oauth2/v2.0/authorize",
        params={k: v for k, v in query.items() if v},
        verify=ms.ca_bundle,
        allow_redirects=False,
        timeout=10,
    )
    response.verifier = verifier  # type: ignore[attr-defined]
    return response


def redirected(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def token(ms: MicrosoftSandbox, **form: str) -> requests.Response:
    return requests.post(
        f"{ms.authority}/oauth2/v2.0/token",
        data={"client_id": ms.client_id, **form},
        verify=ms.ca_bundle,
        timeout=10,
    )


def test_authorize_needs_pkce_s256_and_echoes_the_state(ms: MicrosoftSandbox) -> None:
    assert redirected(authorize(ms, code_challenge=""))["error"] == "invalid_request"
    assert redirected(authorize(ms, code_challenge_method="plain"))["error"] == "invalid_request"
    answer = redirected(authorize(ms))
    assert answer["state"] == "st4te" and answer["code"]
    assert authorize(ms, redirect_uri="https://evil.example/cb").status_code == 400
    assert authorize(ms, client_id="someone-else").status_code == 400
    ms.consent_as = None
    assert redirected(authorize(ms))["error"] == "access_denied"


def test_codes_are_redeemed_once_with_their_verifier(ms: MicrosoftSandbox) -> None:
    response = authorize(ms)
    code = redirected(response)["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://localhost:8400",
    }
    wrong = valid(AAD_ERROR, token(ms, **form, code_verifier="x" * 43).json())
    assert wrong["error"] == "invalid_grant" and wrong["error_codes"] == [501481]
    tokens = valid(TOKEN, token(ms, **form, code_verifier=response.verifier).json())  # type: ignore[attr-defined]
    assert set(tokens["scope"].split()) >= {"Mail.ReadBasic", "User.Read"}
    again = token(ms, **form, code_verifier=response.verifier)  # type: ignore[attr-defined]
    assert again.status_code == 400 and again.json()["error_codes"] == [54005]


def test_each_refresh_rotates_the_refresh_token() -> None:
    with MicrosoftSandbox(rotation_grace=0) as ms:
        ms.add_mailbox(ME)
        first = ms.identity.issue_refresh_token(ME, ("Mail.ReadBasic",))
        second = valid(TOKEN, token(ms, grant_type="refresh_token", refresh_token=first).json())[
            "refresh_token"
        ]
        assert second != first
        stale = valid(AAD_ERROR, token(ms, grant_type="refresh_token", refresh_token=first).json())
        assert stale["error"] == "invalid_grant"
        assert token(ms, grant_type="refresh_token", refresh_token=second).status_code == 200
        ms.revoke(ME)
        revoked = valid(
            AAD_ERROR, token(ms, grant_type="refresh_token", refresh_token=second).json()
        )
        assert revoked["error"] == "invalid_grant" and revoked["error_codes"] == [50173]


def test_a_refresh_within_the_grace_still_works(ms: MicrosoftSandbox) -> None:
    first = ms.identity.issue_refresh_token(ME, ("Mail.ReadBasic",))
    assert token(ms, grant_type="refresh_token", refresh_token=first).status_code == 200
    assert token(ms, grant_type="refresh_token", refresh_token=first).status_code == 200


def test_device_code_is_pending_until_approved(ms: MicrosoftSandbox) -> None:
    flow = requests.post(
        f"{ms.authority}/oauth2/v2.0/devicecode",
        data={"client_id": ms.client_id, "scope": "Mail.ReadBasic User.Read"},
        verify=ms.ca_bundle,
        timeout=10,
    ).json()
    assert {
        "user_code",
        "device_code",
        "verification_uri",
        "expires_in",
        "interval",
        "message",
    } <= set(flow)
    grant = {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": flow["device_code"],
    }
    pending = valid(AAD_ERROR, token(ms, **grant).json())
    assert pending["error"] == "authorization_pending"
    ms.approve_device_code(flow["user_code"])
    valid(TOKEN, token(ms, **grant).json())


# --- Graph: users, errors, permissions ------------------------------------------------------


def test_me_and_users_by_id_or_upn(ms: MicrosoftSandbox) -> None:
    graph = Graph(ms)
    me = graph.get("/me").json()
    assert me["mail"] == ME and me["userPrincipalName"] == ME and me["id"] == ms.user_id(ME)
    assert me["@odata.context"].endswith("$metadata#users/$entity")
    assert graph.get(f"/users/{ms.user_id(ME)}").json()["id"] == me["id"]
    assert graph.get(f"/users/{ME}", **{"$select": "mail"}).json()["mail"] == ME
    assert (
        valid(GRAPH_ERROR, graph.get(f"/users/{OTHER}").json())["error"]["code"]
        == "ErrorAccessDenied"
    )
    add(ms, 1, T0)
    by_id = f"/users/{ms.user_id(ME)}/mailFolders/inbox/messages/delta"
    round_ = valid(DELTA_PAGE, graph.get(by_id, **{"$select": HEADERS}).json())
    assert len(round_["value"]) == 1
    assert round_["@odata.deltaLink"].startswith(
        f"{ms.graph_url}/users/{ms.user_id(ME)}/mailFolders("
    )


def test_bad_tokens_get_401_in_graphs_shape(ms: MicrosoftSandbox) -> None:
    graph = Graph(ms)
    graph.token = "nope"
    answer = graph.get("/me")
    assert answer.status_code == 401
    assert valid(GRAPH_ERROR, answer.json())["error"]["code"] == "InvalidAuthenticationToken"


def test_mail_readbasic_cannot_read_bodies(ms: MicrosoftSandbox) -> None:
    add(ms, 1, T0)
    basic, full = Graph(ms), Graph(ms, ("Mail.Read", "User.Read"))
    for select in ("body", "subject,bodyPreview", "uniqueBody"):
        answer = basic.get("/me/messages", **{"$select": select})
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "ErrorAccessDenied"
    assert basic.get("/me/messages").status_code == 403  # the default property set has the body
    assert basic.get("/me/mailFolders/inbox/messages/delta").status_code == 403
    assert full.get("/me/messages").status_code == 200
    valid(COLLECTION, basic.get("/me/messages", **{"$select": HEADERS}).json())
    assert basic.get("/me/messages", **{"$select": "subject,nonsense"}).status_code == 400


# --- Graph: delta -------------------------------------------------------------------------------


def test_delta_pages_follow_maxpagesize_and_end_with_a_delta_link(ms: MicrosoftSandbox) -> None:
    ids = [add(ms, n, T0 + timedelta(minutes=n)) for n in range(5)]
    graph = Graph(ms)
    first = graph.get("/me/mailFolders/inbox/messages/delta", **{"$select": HEADERS})
    assert first.headers["Preference-Applied"] == 'odata.maxpagesize=2, IdType="ImmutableId"'
    pages = graph.delta(**{"$select": HEADERS})
    assert [len(p["value"]) for p in pages] == [2, 2, 1]
    assert all("$skiptoken=" in p["@odata.nextLink"] for p in pages[:-1])
    assert "$deltatoken=" in pages[-1]["@odata.deltaLink"]
    assert sorted(i["id"] for i in items(pages)) == sorted(ids)
    assert set(items(pages)[0]) == {"@odata.type", "@odata.etag", "id", *HEADERS.split(",")}
    again = graph.get(pages[-1]["@odata.deltaLink"]).json()
    assert again["value"] == [] and "@odata.deltaLink" in again


def test_ids_are_immutable_only_when_asked(ms: MicrosoftSandbox) -> None:
    message = add(ms, 1, T0)
    graph = Graph(ms)
    graph.prefer = "odata.maxpagesize=10"
    regular = items(graph.delta(**{"$select": "subject"}))[0]["id"]
    ms.move_message(ME, message, "archive")
    moved = items(graph.delta("archive", **{"$select": "subject"}))[0]["id"]
    assert regular != message and moved != regular  # the default id changes with the folder
    graph.prefer = 'IdType="ImmutableId"'
    assert items(graph.delta("archive", **{"$select": "subject"}))[0]["id"] == message


def test_a_later_round_has_additions_partial_updates_and_removals(ms: MicrosoftSandbox) -> None:
    read, moved, deleted = (add(ms, n, T0 + timedelta(minutes=n)) for n in range(3))
    graph = Graph(ms)
    link = graph.delta(**{"$select": HEADERS + ",isRead"})[-1]["@odata.deltaLink"]
    ms.update_message(ME, read, isRead=True)
    ms.move_message(ME, moved, "archive")
    ms.delete_message(ME, deleted)
    new = add(ms, 9, T0 + timedelta(days=1))

    changes = {i["id"]: i for i in items(graph.delta(link=link))}

    assert set(changes[read]) == {"@odata.type", "@odata.etag", "id", "isRead"}
    assert changes[read]["isRead"] is True  # only what changed (lastModifiedDateTime not selected)
    assert changes[moved]["@removed"] == {"reason": "changed"}
    assert changes[deleted]["@removed"] == {"reason": "deleted"}
    assert changes[new]["subject"] == "Quote 9" and "@removed" not in changes[new]


def test_filtered_initial_delta_is_capped_and_only_takes_received_date(
    ms: MicrosoftSandbox,
) -> None:
    for n in range(6):
        add(ms, n, T0 + timedelta(days=n))
    add(ms, 99, T0 - timedelta(days=30))
    graph = Graph(ms)
    window = items(
        graph.delta(
            **{"$select": HEADERS, "$filter": f"receivedDateTime ge {T0:%Y-%m-%dT%H:%M:%SZ}"}
        )
    )
    assert len(window) == 3  # the cap (5,000 at Graph; 3 here)
    assert len(items(graph.delta(**{"$select": HEADERS}))) == 7  # no cap without a filter
    bad = graph.get(
        "/me/mailFolders/inbox/messages/delta", **{"$select": HEADERS, "$filter": "isRead eq false"}
    )
    assert bad.status_code == 400


def test_an_expired_folder_answers_410_with_a_location(ms: MicrosoftSandbox) -> None:
    add(ms, 1, T0)
    graph = Graph(ms)
    link = graph.delta(**{"$select": HEADERS})[-1]["@odata.deltaLink"]
    ms.expire_delta(ME, "inbox")
    gone = graph.get(link)
    assert gone.status_code == 410
    assert valid(GRAPH_ERROR, gone.json())["error"]["code"] == "syncStateNotFound"
    assert gone.headers["Location"].endswith("/messages/delta?$deltatoken=")
    assert len(items(graph.delta(**{"$select": HEADERS}))) == 1  # a new initial round works


def test_a_replay_repeats_the_previous_page(ms: MicrosoftSandbox) -> None:
    for n in range(4):
        add(ms, n, T0 + timedelta(minutes=n))
    graph = Graph(ms)
    first = graph.get("/me/mailFolders/inbox/messages/delta", **{"$select": HEADERS}).json()
    ms.replay_next_delta(ME, "inbox")
    second = graph.get(first["@odata.nextLink"]).json()
    assert [i["id"] for i in second["value"][:2]] == [i["id"] for i in first["value"]]
    assert len(second["value"]) == 4


# --- Graph: lists, $batch, concurrency ---------------------------------------------------


def test_messages_filter_order_and_paging(ms: MicrosoftSandbox) -> None:
    for n in range(5):
        add(ms, n, T0 + timedelta(hours=n), conversation_id="AAQkADa=" if n % 2 else "AAQkADb=")
    graph = Graph(ms)
    found = graph.get(
        "/me/messages",
        **{
            "$filter": "conversationId eq 'AAQkADa=' or conversationId eq 'AAQkADzz='",
            "$select": "receivedDateTime,conversationId",
        },
    ).json()
    assert {i["conversationId"] for i in valid(COLLECTION, found)["value"]} == {"AAQkADa="}
    assert len(found["value"]) == 2
    inefficient = graph.get(
        "/me/messages",
        **{
            "$filter": "conversationId eq 'AAQkADa='",
            "$orderby": "receivedDateTime",
            "$select": "subject",
        },
    )
    assert (
        inefficient.status_code == 400
        and inefficient.json()["error"]["code"] == "InefficientFilter"
    )
    ordered = graph.get(
        "/me/mailFolders/inbox/messages",
        **{
            "$filter": f"receivedDateTime ge {T0:%Y-%m-%dT%H:%M:%SZ} and conversationId eq 'AAQkADb='",
            "$orderby": "receivedDateTime desc",
            "$select": "receivedDateTime",
            "$top": "2",
            "$count": "true",
        },
    ).json()
    assert ordered["@odata.count"] == 3 and len(ordered["value"]) == 2
    dates = [i["receivedDateTime"] for i in ordered["value"]]
    assert dates == sorted(dates, reverse=True)
    rest = graph.get(ordered["@odata.nextLink"]).json()
    assert len(rest["value"]) == 1 and "@odata.nextLink" not in rest


def batch(ms: MicrosoftSandbox, requests_: list[dict[str, Any]]) -> requests.Response:
    return requests.post(
        ms.graph_url + "/$batch",
        json={"requests": requests_},
        headers={"Authorization": f"Bearer {ms.access_token(ME)}"},
        verify=ms.ca_bundle,
        timeout=10,
    )


def test_batch_answers_each_part_and_takes_at_most_twenty(ms: MicrosoftSandbox) -> None:
    message = add(ms, 1, T0)
    ms.faults.add(
        Fault(
            path=r"/v1.0/me/messages/", status=429, headers={"Retry-After": "2"}, body="{}", after=1
        )
    )
    parts = [
        {"id": "a", "method": "GET", "url": f"/me/messages/{message}?$select=subject"},
        {"id": "b", "method": "GET", "url": "/me?$select=mail"},
        {"id": "c", "method": "GET", "url": f"/me/messages/{message}?$select=subject"},
        {"id": "d", "method": "GET", "url": "/me/messages/AAkALgnothere=?$select=subject"},
    ]
    answer = batch(ms, parts).json()["responses"]
    by_id = {r["id"]: r for r in answer}
    assert by_id["b"]["status"] == 200 and by_id["b"]["body"]["mail"] == ME
    statuses = sorted([by_id["a"]["status"], by_id["c"]["status"]])
    assert statuses == [200, 429]  # the fault hit one of the two parts
    throttled = by_id["a"] if by_id["a"]["status"] == 429 else by_id["c"]
    assert throttled["headers"]["Retry-After"] == "2"
    assert (
        by_id["d"]["status"] == 404 and by_id["d"]["body"]["error"]["code"] == "ErrorItemNotFound"
    )
    assert ms.meter.requests["http"] == 1 and ms.meter.requests["graph.batch.part"] == 4
    too_many = batch(ms, [{"id": str(i), "method": "GET", "url": "/me"} for i in range(21)])
    assert too_many.status_code == 400


def test_outlook_runs_four_requests_of_a_mailbox_at_once_and_throttles_beyond() -> None:
    with MicrosoftSandbox(latency=0.2) as ms:
        ms.add_mailbox(ME)
        token = ms.access_token(ME)
        statuses: list[int] = []

        def call() -> None:
            answer = requests.get(
                ms.graph_url + "/me",
                headers={"Authorization": f"Bearer {token}"},
                verify=ms.ca_bundle,
                timeout=10,
            )
            statuses.append(answer.status_code)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert ms.max_concurrency(ME) >= 5
        assert statuses.count(429) >= 1 and statuses.count(200) >= 4
        parts = [{"id": str(i), "method": "GET", "url": "/me"} for i in range(8)]
        ms.traffic.highest.clear()
        answer = batch(ms, parts).json()["responses"]
        assert all(r["status"] == 200 for r in answer)
        assert ms.max_concurrency(ME) == 4  # a batch's parts run four at a time


def test_seeding_from_rfc_headers(ms: MicrosoftSandbox) -> None:
    message = ms.add_message_from_headers(
        ME,
        "inbox",
        [
            ("From", '"Doe, Jane" <jane@client.example>'),
            ("To", "rep@contoso.example, Boss <boss@contoso.example>"),
            ("Subject", "Hello"),
            ("Message-ID", "<abc@client.example>"),
            ("Date", "Sat, 01 Mar 2025 08:59:00 +0000"),
        ],
        received=T0,
    )
    stored = ms.message(ME, message)
    assert stored["from"]["emailAddress"] == {"name": "Doe, Jane", "address": "jane@client.example"}
    assert [r["emailAddress"]["address"] for r in stored["toRecipients"]] == [ME, OTHER]
    assert (
        stored["sentDateTime"] == "2025-03-01T08:59:00Z"
        and stored["receivedDateTime"] == "2025-03-01T09:00:00Z"
    )
    body = (
        Graph(ms)
        .get(f"/me/messages/{message}", **{"$select": "internetMessageHeaders,subject"})
        .json()
    )
    assert {"name": "Message-ID", "value": "<abc@client.example>"} in body["internetMessageHeaders"]
    json.dumps(body)
