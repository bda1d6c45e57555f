"""Connect a Google Workspace domain-wide: a service account impersonates each member's mailbox.

The admin gives maillink a service account's JSON key (credentials.json `google_service_account`
or `google_service_account_file`) and, in the Admin console (Security → API controls →
Domain-wide delegation), grants its client id the scopes `gmail.metadata` and, to list the
members, `admin.directory.user.readonly`. The members come from the Admin SDK Directory API's
users.list (impersonating `[gmail] domain_wide_admin`, for `[gmail] domain` or the whole
customer; suspended users left out) or from `[gmail] members`. Each becomes a mailbox
`connected_via = "domain"` with no token of its own (`maillink.onboarding.team`); its round
reads it with `mailbox_credentials`, google-auth's service-account credentials with the mailbox
as subject, refreshed by the JWT bearer grant (`maillink.providers.google_token`).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httplib2
from google.auth import crypt
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError

from maillink.errors import ConfigError, ConnectError
from maillink.onboarding.team import Member, MembersReport, sync_members
from maillink.providers.base import ProviderError
from maillink.providers.gmail_api import SCOPE_METADATA, check_endpoint, classify
from maillink.providers.google_token import DelegatedCredentials, TokenRefused, refresh
from maillink.providers.retry import RetryPolicy
from maillink.store import accounts

if TYPE_CHECKING:
    from maillink.app import App

SCOPE_DIRECTORY_USERS = "https://www.googleapis.com/auth/admin.directory.user.readonly"
DELEGATION_PAGE = "the Admin console, Security → API controls → Domain-wide delegation"
DIRECTORY_FIELDS = "nextPageToken,users(id,primaryEmail,suspended)"
PAGE_SIZE = 500  # the Directory API's largest page
HTTP_TIMEOUT = 60.0


# Each App's delegated credentials, by (key id, mailbox): see `mailbox_credentials`.
_KEPT: weakref.WeakKeyDictionary[App, dict[tuple[str, str], DelegatedCredentials]] = (
    weakref.WeakKeyDictionary()
)
_KEPT_LOCK = threading.Lock()


class DomainWideError(ConnectError):
    """The domain-wide connection failed; the message says why and what to do (exit 1)."""


def delegated_credentials(
    key: dict[str, Any], subject: str, scopes: Sequence[str] = (SCOPE_METADATA,)
) -> DelegatedCredentials:
    """The service account's credentials impersonating `subject` for `scopes` (token_uri from
    the key); the access token is obtained at the first request that needs it."""
    try:
        signer = crypt.RSASigner.from_service_account_info(key)
        email, token_uri = str(key["client_email"]), str(key["token_uri"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            "credentials.json: google_service_account: the private key cannot be read "
            "(download a new JSON key for the service account)"
        ) from None
    return DelegatedCredentials(signer, email, token_uri, subject, scopes)


def service_account_key(app: App) -> dict[str, Any] | None:
    """The service account's JSON key from credentials.json, if one is given."""
    return app.credentials.google_service_account


def mailbox_credentials(app: App, email: str) -> DelegatedCredentials:
    """A domain-connected mailbox's credentials: the service account impersonating it.

    Kept for the App's life (per key and mailbox), so that each round reuses the access token
    until it is nearly spent instead of asking the token endpoint again; a mailbox is read by
    one round at a time (its lease), so its credentials are never shared by two."""
    key = service_account_key(app)
    if key is None:
        raise ConfigError(
            f"{app.settings.credentials_path}: google_service_account is missing: {email} was "
            "connected domain-wide (add the service account's JSON key, or its path as "
            "google_service_account_file)"
        )
    with _KEPT_LOCK:
        kept = _KEPT.setdefault(app, {})
        found = kept.get((key["private_key_id"], email))
        if found is None:
            found = kept[(key["private_key_id"], email)] = delegated_credentials(key, email)
    return found


def domain_members(app: App) -> list[Member] | None:
    """The Workspace members to connect: `[gmail] members`, else the Directory's users; None
    when domain-wide delegation is not configured (no service account, admin or members)."""
    gmail = app.settings.gmail
    if not gmail.members and not gmail.domain_wide_admin:
        return None
    key = service_account_key(app)
    if key is None:
        raise ConfigError(
            f"{app.settings.credentials_path}: google_service_account is missing: [gmail] "
            f"{'members' if gmail.members else 'domain_wide_admin'} asks for domain-wide "
            "delegation (add the service account's JSON key, or google_service_account_file)"
        )
    if gmail.members:
        return [Member(email, None) for email in gmail.members]
    assert gmail.domain_wide_admin is not None
    return list_directory(
        key, gmail.domain_wide_admin, domain=gmail.domain, endpoint=gmail.directory_endpoint
    )


def connect_domain_wide(app: App, *, policy: RetryPolicy | None = None) -> MembersReport:
    """`maillink connect gmail --domain-wide`: list the members, check that the service account
    may read their mail, and make the domain-connected mailboxes follow the list."""
    members = domain_members(app)
    if members is None:
        raise ConfigError(
            f"{app.settings.config_path}: [gmail] domain_wide_admin (or members) is missing: "
            "domain-wide connection needs the admin whose directory is listed, or a list of "
            "addresses, and the service account's key in credentials.json"
        )
    if not members:
        raise DomainWideError("the directory lists no active user: nothing to connect")
    key = service_account_key(app)
    assert key is not None
    # Every address of an explicit list is checked; the directory's users are of the domain,
    # so one of them tells whether gmail.metadata is delegated.
    checked = members if app.settings.gmail.members else members[:1]
    for member in checked:
        check_mailbox(key, member.email, policy=policy)
    check = functools.partial(mailbox_problem, app)
    return sync_members(app, "gmail", "domain", members, check)


def mailbox_problem(app: App, member: Member, account: accounts.Account | None) -> str | None:
    """Why the service account cannot read a domain-connected mailbox now (None: it can): asked
    by `maillink accounts refresh` before a mailbox that needs re-authorisation (delegation
    withdrawn, user suspended) is made active again. A new member is not asked here: the
    directory's users are of the domain, and `connect_domain_wide` checked the delegation."""
    key = service_account_key(app)
    if account is None or key is None:
        return None
    try:
        check_mailbox(key, member.email)
    except DomainWideError as error:
        return str(error)
    return None


def check_mailbox(
    key: dict[str, Any], email: str, *, policy: RetryPolicy | None = None
) -> DelegatedCredentials:
    """An access token for `email`'s mail, or a `DomainWideError` saying what to fix."""
    credentials = delegated_credentials(key, email)
    _token(credentials, httplib2.Http(timeout=HTTP_TIMEOUT), key, email, SCOPE_METADATA, policy)
    return credentials


def list_directory(
    key: dict[str, Any],
    admin: str,
    *,
    domain: str | None,
    endpoint: str,
    policy: RetryPolicy | None = None,
) -> list[Member]:
    """The active users of the Workspace (of `domain`, else of the whole customer), listed by
    the Directory API's users.list as `admin`, every page."""
    try:
        check_endpoint(endpoint, "[gmail] directory_endpoint")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    policy = (policy or RetryPolicy()).for_service("gmail")
    credentials = delegated_credentials(key, admin, (SCOPE_DIRECTORY_USERS,))
    http = httplib2.Http(timeout=HTTP_TIMEOUT)
    _token(credentials, http, key, admin, SCOPE_DIRECTORY_USERS, policy, admin=True)
    authorized = _BearerHttp(
        http,
        credentials,
        lambda: _token(credentials, http, key, admin, SCOPE_DIRECTORY_USERS, policy, admin=True),
    )
    service = build_from_document(
        get_static_doc("admin", "directory_v1"),
        http=authorized,
        client_options={"api_endpoint": endpoint},
    )
    users = service.users()
    where = {"domain": domain} if domain else {"customer": "my_customer"}
    request = users.list(maxResults=PAGE_SIZE, fields=DIRECTORY_FIELDS, **where)
    members: list[Member] = []
    seen_tokens: set[str] = set()
    while request is not None:
        page = _page(policy, request, admin, domain)
        for user in page.get("users") or []:
            email = str(user.get("primaryEmail") or "").strip().lower()
            if email and not user.get("suspended"):
                members.append(Member(email, str(user["id"]) if user.get("id") else None))
        token = page.get("nextPageToken")
        if token in seen_tokens:  # a listing that would never end
            raise DomainWideError("the Directory API sent the same page token twice")
        if token:
            seen_tokens.add(token)
        request = users.list_next(request, page)
    return members


def _quiet(record: logging.LogRecord) -> bool:
    """The client library's own warning about an error answer: the policy reports it."""
    return record.levelno > logging.WARNING


def _page(policy: RetryPolicy, request: Any, admin: str, domain: str | None) -> dict[str, Any]:
    library = logging.getLogger("googleapiclient.http")
    library.addFilter(_quiet)
    try:
        page: dict[str, Any] = policy.call(
            lambda: request.execute(num_retries=0), classify=classify, what="directory users.list"
        )
    except ProviderError as error:
        cause = error.__cause__
        if isinstance(cause, HttpError) and cause.resp.status == 403:
            raise DomainWideError(
                f"the Directory API refused to list the users of {domain or 'the Workspace'} "
                f"for [gmail] domain_wide_admin {admin} (403): name a Workspace admin who may "
                "read users, and a domain of the Workspace"
            ) from None
        raise DomainWideError(f"could not list the Workspace's users: {error}") from None
    finally:
        library.removeFilter(_quiet)
    return page


class _BearerHttp:
    """httplib2's `request`, as the client library calls it, with the delegated access token
    (obtained again when it is spent or refused)."""

    def __init__(
        self,
        http: httplib2.Http,
        credentials: DelegatedCredentials,
        renew: Callable[[], None],
    ) -> None:
        self._http = http
        self._credentials = credentials
        self._renew = renew

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[httplib2.Response, bytes]:
        if not self._credentials.valid:
            self._renew()
        sent = dict(headers or {})
        sent["authorization"] = f"Bearer {self._credentials.token}"
        response, content = self._http.request(uri, method, body=body, headers=sent, **kwargs)
        if response.status == 401:
            self._renew()
            sent["authorization"] = f"Bearer {self._credentials.token}"
            response, content = self._http.request(uri, method, body=body, headers=sent, **kwargs)
        return response, content


def _token(
    credentials: DelegatedCredentials,
    http: httplib2.Http,
    key: dict[str, Any],
    subject: str,
    scope: str,
    policy: RetryPolicy | None,
    *,
    admin: bool = False,
) -> None:
    """An access token into `credentials` (the JWT bearer grant, retried under the policy when
    the token endpoint is busy); a refusal becomes a one-line `DomainWideError`."""

    def send(
        url: str, method: str, body: str | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        response, content = http.request(url, method, body=body, headers=headers)
        return response.status, dict(response), content

    try:
        (policy or RetryPolicy()).for_service("gmail").call(
            lambda: refresh(credentials, send), classify=classify, what="google token"
        )
    except ProviderError as error:
        cause = error.__cause__
        if isinstance(cause, TokenRefused):
            raise DomainWideError(_refusal(cause, key, subject, scope, admin)) from None
        raise DomainWideError(f"could not get a token for {subject}: {error}") from None


def _refusal(
    refused: TokenRefused, key: dict[str, Any], subject: str, scope: str, admin: bool
) -> str:
    """What the token endpoint's refusal means for the admin, in one line."""
    if refused.error == "unauthorized_client":
        return (
            f"domain-wide delegation is not granted for client id {key['client_id']} with "
            f"scope {scope}: add it in {DELEGATION_PAGE}"
        )
    if refused.error == "invalid_grant":
        who = f"[gmail] domain_wide_admin {subject}" if admin else subject
        return (
            f"Google refused to impersonate {who} (invalid_grant): it is not an active user of "
            "the Workspace domain, or the service account's key was deleted"
        )
    return f"Google refused a token for {subject} ({refused.error or refused.status})"
