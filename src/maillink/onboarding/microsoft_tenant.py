"""Microsoft tenant-wide connection: the app's own token (client credentials) and the tenant's
members, so that an admin connects every mailbox of a team with one consent.

The app needs the application permissions Mail.ReadBasic.All and User.Read.All (and
GroupMember.Read.All when `[microsoft] members_group` names a group), granted by an admin. Its
token is asked with `{graph}/.default` through MSAL's `ConfidentialClientApplication`
(`acquire_token_for_client`, cached by MSAL), one per process, shared by every mailbox so
connected; there is no refresh token per user. Those mailboxes are read at `/users/{id}/…`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import msal
import requests

from maillink.config import MicrosoftCredentials
from maillink.errors import ConfigError, ConnectError
from maillink.http_policy import GRAPH, TEAM_RULES, Action, Failure, decide
from maillink.onboarding.microsoft_msal import check_authority, describe, uses_instance_discovery
from maillink.onboarding.team import Member, MembersReport, sync_members
from maillink.providers.base import NeedsReauth, ProviderError
from maillink.providers.graph_api import GraphApi, GraphHTTPError, TokenUnavailable, shared_session
from maillink.providers.retry import RetryPolicy

if TYPE_CHECKING:
    from maillink.app import App

APP_PERMISSIONS = ("Mail.ReadBasic.All", "User.Read.All")
GROUP_PERMISSION = "GroupMember.Read.All"
USER_FIELDS = "id,mail,userPrincipalName,accountEnabled"
PAGE_SIZE = 999  # the largest page Graph gives of users
# What the admin does about a refusal of the app's token (the policy's TEAM_RULES say which
# refusals need re-authorisation); then `maillink accounts refresh` checks again.
APP_REFUSALS = {
    "invalid_client": "check credentials.json microsoft.client_secret (expired or replaced?)",
    "unauthorized_client": "the app is disabled or was removed from the tenant: an admin "
    "enables it again (Entra ID → Enterprise applications) or grants admin consent again",
}
APP_REFUSED_HINT = "check the app registration and its admin consent in Entra ID"
MULTI_TENANT = frozenset({"common", "organizations", "consumers"})
# Graph's answer for a user with a `mail` address but no Exchange Online mailbox (no licence,
# or a mailbox hosted on-premises).
NO_MAILBOX = frozenset({"MailboxNotEnabledForRESTAPI", "MailboxNotSupportedForRESTAPI"})
MAIL_REFUSALS = {
    "MailboxNotEnabledForRESTAPI": ": the user has no Exchange Online mailbox (a licence with "
    "Exchange Online, or a mailbox moved from on-premises, gives one)",
    "ErrorAccessDenied": f": grant the app {APP_PERMISSIONS[0]} (with admin consent) and include "
    "the mailbox in any application access policy",
}
_GROUP_ID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class TenantConnectError(ConnectError):
    """The tenant-wide connection could not list the members; the message says what to fix."""


def graph_scope(graph_url: str) -> str:
    """The client-credentials scope of the configured Graph: `{scheme://host}/.default`."""
    parts = urlsplit(graph_url)
    return f"{parts.scheme}://{parts.netloc}/.default"


class AppTokenSource:
    """The app's access token for Graph (client credentials), from MSAL's cache while it is
    valid. Callable like `MicrosoftTokenSource`; `invalidate()` makes the next call ask anew."""

    def __init__(
        self,
        client_id: str,
        *,
        authority: str,
        client_secret: str,
        graph_url: str,
        ca_bundle: str | None = None,
        http_timeout: float = 60.0,
    ) -> None:
        check_authority(authority)
        self._scopes = [graph_scope(graph_url)]
        # MSAL's memory of answers (a refusal is not asked again for 60 s): ours to forget.
        self._http_cache: dict[Any, Any] = {}
        self._app = msal.ConfidentialClientApplication(
            client_id,
            client_credential=client_secret,
            authority=authority,
            instance_discovery=uses_instance_discovery(authority),
            http_client=shared_session(ca_bundle, http_timeout),
            http_cache=self._http_cache,
        )
        self._lock = threading.Lock()
        self._force = False

    def invalidate(self) -> None:
        with self._lock:
            self._force = True

    def forget_refusals(self) -> None:
        """Ask the token endpoint again even if it refused within the last minute (MSAL keeps
        a 400 answer that long): `maillink accounts refresh` checks again, now."""
        with self._lock:
            self._http_cache.clear()

    def __call__(self) -> str:
        with self._lock:
            try:
                if self._force:
                    self._app.remove_tokens_for_client()
                    self._force = False
                result: dict[str, Any] = self._app.acquire_token_for_client(self._scopes)
            except requests.RequestException as error:
                raise TokenUnavailable(
                    f"the Microsoft token endpoint is unreachable ({type(error).__name__})"
                ) from None
            except (ValueError, msal.exceptions.MsalServiceError) as error:
                raise ProviderError(f"the Microsoft sign-in is misconfigured: {error}") from None
        if "access_token" in result:
            return str(result["access_token"])
        refused = str(result.get("error") or "") or None
        if decide(GRAPH, Failure(None, refused), rules=TEAM_RULES) is Action.REAUTH:
            hint = APP_REFUSALS.get(refused or "", APP_REFUSED_HINT)
            raise NeedsReauth(
                f"Microsoft refused the app's token ({describe(result)}); {hint}, "
                "then: maillink accounts refresh"
            )
        raise TokenUnavailable(f"the app token failed ({describe(result)})")


_sources: dict[tuple[str, str, str, str, str | None], AppTokenSource] = {}
_sources_lock = threading.Lock()


def app_token_source(
    client: MicrosoftCredentials, *, authority: str, graph_url: str, ca_bundle: str | None = None
) -> AppTokenSource:
    """The process's one app token source for this configuration (built at its first use)."""
    if not client.client_secret:
        raise ConfigError(
            "credentials.json: microsoft.client_secret is missing: a tenant-wide connection "
            "uses the app's own credentials (add a client secret to the app registration)"
        )
    key = (client.client_id, authority, client.client_secret, graph_url, ca_bundle)
    with _sources_lock:
        found = _sources.get(key)
        if found is None:
            found = AppTokenSource(
                client.client_id,
                authority=authority,
                client_secret=client.client_secret,
                graph_url=graph_url,
                ca_bundle=ca_bundle,
            )
            _sources[key] = found
        return found


def tenant_token_source(app: App) -> AppTokenSource:
    """The app token source of `app`'s configuration."""
    client = app.credentials.microsoft
    if client is None:
        raise ConfigError(
            f"{app.settings.credentials_path}: microsoft is missing: add "
            '{"client_id": "…", "client_secret": "…"} (an app registration in Microsoft Entra ID)'
        )
    authority = app.settings.microsoft.authority
    if urlsplit(authority).path.strip("/").lower() in MULTI_TENANT:
        raise ConfigError(
            f"[microsoft] authority {authority!r}: a tenant-wide connection needs your tenant "
            "in it (…/YOUR-TENANT-ID or …/yourcompany.onmicrosoft.com), not a multi-tenant name"
        )
    return app_token_source(client, authority=authority, graph_url=app.settings.microsoft.graph_url)


def tenant_members(app: App, *, token_source: Callable[[], str] | None = None) -> list[Member]:
    """The tenant's members: the enabled users of `[microsoft] members_group` (id or display
    name), or of the whole tenant, that have a mail address."""
    settings = app.settings.microsoft
    source = token_source
    if source is None:
        app_source = tenant_token_source(app)
        app_source.forget_refusals()  # an admin may have just mended what was refused
        source = app_source
    api = GraphApi(
        source,
        graph_url=settings.graph_url,
        max_concurrency=1,
        page_size=PAGE_SIZE,
        policy=RetryPolicy(),
    )
    group = settings.members_group
    try:
        if group is None:
            path, needed = "/users", APP_PERMISSIONS[1]
        else:
            group_id = group if _GROUP_ID.match(group) else _group_id(api, group)
            path = f"/groups/{quote(group_id, safe='')}/members/microsoft.graph.user"
            needed = GROUP_PERMISSION
        query = urlencode({"$select": USER_FIELDS, "$top": str(PAGE_SIZE)}, safe="$,")
        rows = _all_pages(api, api.url(f"{path}?{query}"), needed)
    except NeedsReauth as error:
        raise TenantConnectError(str(error)) from None
    members = []
    for row in rows:
        address = row.get("mail") or row.get("userPrincipalName")
        if row.get("accountEnabled") is False or not row.get("mail") or not address:
            continue  # a disabled account, or a user without a mailbox
        members.append(Member(str(address).lower(), str(row.get("id") or "") or None))
    return members


def _group_id(api: GraphApi, name: str) -> str:
    escaped = name.replace("'", "''")
    query = urlencode({"$filter": f"displayName eq '{escaped}'", "$select": "id,displayName"})
    found = _all_pages(api, api.url(f"/groups?{query}"), GROUP_PERMISSION)
    ids = [str(g["id"]) for g in found if g.get("id")]
    if len(ids) != 1:
        state = "no group" if not ids else f"{len(ids)} groups"
        raise ConfigError(
            f"[microsoft] members_group: {state} named {name!r} in the tenant "
            "(give the group's id instead)"
        )
    return ids[0]


def _all_pages(api: GraphApi, url: str, needed: str) -> list[dict[str, Any]]:
    """Every item of a Graph collection, following `@odata.nextLink` (never the same twice)."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    next_url: str | None = url
    while next_url is not None:
        if next_url in seen:
            raise ProviderError(f"Graph handed back the same page link twice ({url})")
        seen.add(next_url)
        try:
            page = api.get(next_url, what="graph directory")
        except ProviderError as error:
            raise _explained(error, needed) from None
        rows += [r for r in page.get("value") or () if isinstance(r, dict)]
        link = page.get("@odata.nextLink")
        next_url = api.check_link(str(link)) if link else None
    return rows


def _explained(error: ProviderError, needed: str) -> Exception:
    """A refusal in one line that says which application permission the app lacks."""
    cause = error.__cause__
    if isinstance(error, NeedsReauth) and not isinstance(cause, GraphHTTPError):
        return error
    if isinstance(cause, GraphHTTPError) and cause.status == 403:
        return TenantConnectError(
            f"Microsoft Graph refused to list the members (403 {cause.code}): the app lacks the "
            f"application permission {needed}; grant it (with admin consent) in Entra ID"
        )
    return error


def connect_tenant(app: App) -> MembersReport:
    """`maillink connect microsoft --tenant-wide`: list the members and make the mailboxes
    connected tenant-wide follow them (a member without an Exchange Online mailbox is not
    added: there is nothing to read; the next refresh checks again)."""
    members = tenant_members(app)
    check_mail_permission(app, members)
    return sync_members(
        app, "microsoft", "tenant", members, lambda member, _account: mailbox_problem(app, member)
    )


def check_mail_permission(app: App, members: list[Member]) -> None:
    """One request on a member's mailbox (the first that has one): a 403 names
    Mail.ReadBasic.All (or the application access policy) now rather than at every round."""
    for member in members:
        refused = _mail_refusal(app, member)
        if isinstance(refused, GraphHTTPError) and refused.code in NO_MAILBOX:
            continue  # nothing to read there: ask the next member's mailbox
        if isinstance(refused, GraphHTTPError) and refused.status == 403:
            raise TenantConnectError(
                f"Microsoft Graph refused to read {member.email}'s mail (403 {refused.code}): "
                f"grant the app the application permission {APP_PERMISSIONS[0]} (with admin "
                "consent), and if an application access policy restricts it, include this "
                "mailbox's group"
            )
        if refused is not None:
            raise TenantConnectError(str(refused))
        return


def mailbox_problem(app: App, member: Member) -> str | None:
    """Why the app cannot read `member`'s mail now (None: it can), in one line: asked before a
    member is added and before a mailbox that needs re-authorisation is made active again."""
    refused = _mail_refusal(app, member)
    if isinstance(refused, GraphHTTPError):
        hint = MAIL_REFUSALS.get(refused.code or "", "")
        return f"Microsoft Graph cannot read its mail ({refused}){hint}"
    return None if refused is None else str(refused)


def _mail_refusal(app: App, member: Member) -> GraphHTTPError | NeedsReauth | None:
    """One request on the member's inbox under the team connections' policy: None when it
    answers; what refused it when the policy says re-authorise (Graph's answer, or the app's
    token refused); other failures (Graph unreachable, busy) are raised."""
    source = tenant_token_source(app)
    root = f"/users/{quote(member.directory_id or member.email, safe='@')}"
    api = GraphApi(
        source,
        graph_url=app.settings.microsoft.graph_url,
        max_concurrency=1,
        page_size=1,
        policy=RetryPolicy(rules=TEAM_RULES),
    )
    url = api.url(f"{root}/mailFolders/inbox/messages?$select=receivedDateTime&$top=1")
    for fresh in (False, True):
        try:
            api.get(url, what="graph")
        except NeedsReauth as error:
            cause = error.__cause__
            refused: GraphHTTPError | NeedsReauth = (
                cause if isinstance(cause, GraphHTTPError) else error
            )
        else:
            return None
        if fresh or not (isinstance(refused, GraphHTTPError) and refused.status == 403):
            return refused
        # The app's cached token may predate a permission granted since: ask for a new one.
        source.invalidate()
    return None
