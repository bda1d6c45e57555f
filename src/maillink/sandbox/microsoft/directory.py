"""The tenant's directory in the Microsoft sandbox, and what an app (client credentials) may do.

- The token endpoint's `client_credentials` grant: the client secret is checked, the scope must be
  `{resource}/.default`, and the token carries the application permissions the tenant granted
  (`IdentityState.app_permissions`), as Entra ID's `roles` claim does.
- Graph `/users` (paged with `@odata.nextLink`, `$select`, `$top`), `/users/{id}` read by an app,
  `/groups` (by `displayName`), `/groups/{id}/members/microsoft.graph.user`, with Entra ID's 403
  `Authorization_RequestDenied` when the app lacks User.Read.All / GroupMember.Read.All.
- An app token reads `/users/{id}/…` mail only with Mail.ReadBasic.All (or Mail.Read), and only
  the mailboxes an application access policy allows (Exchange Online's
  `New-ApplicationAccessPolicy -AccessRight RestrictAccess -PolicyScopeGroupId …`).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from flask import Flask, request

from maillink.sandbox.microsoft.grants import (
    LOOPBACK_HOSTS,
    AccessRecord,
    Grant,
    IdentityState,
    aad_error,
)
from maillink.sandbox.microsoft.odata import ODataError, graph_error

if TYPE_CHECKING:
    from maillink.sandbox.microsoft.graph import GraphContext
    from maillink.sandbox.microsoft.mailbox import Mailbox

GRAPH_RESOURCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
APP_MAIL = frozenset({"Mail.ReadBasic.All", "Mail.Read"})
APP_USERS = frozenset({"User.Read.All", "User.ReadBasic.All", "Directory.Read.All"})
APP_GROUPS = frozenset({"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"})
MAX_TOP = 999
USER_PROPERTIES = ("id", "displayName", "mail", "userPrincipalName", "accountEnabled")

DENIED = "Insufficient privileges to complete the operation."
POLICY_DENIED = (
    "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy "
    "settings."
)


@dataclass
class Group:
    id: str
    display_name: str
    members: set[str] = field(default_factory=set)  # mailbox keys


@dataclass
class Directory:
    """Groups, disabled users and the application access policy of the sandbox's tenant."""

    groups: dict[str, Group] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    policy_group: str | None = None  # set: an app reads only this group's members' mail
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_group(self, display_name: str) -> str:
        with self.lock:
            group_id = str(uuid.uuid4())
            self.groups[group_id] = Group(group_id, display_name)
            return group_id

    def group(self, group_id: str) -> Group:
        try:
            return self.groups[group_id]
        except KeyError:
            raise KeyError(f"no group {group_id} in the Microsoft sandbox") from None

    def app_may_read(self, key: str) -> bool:
        """Whether the application access policy (if any) lets an app read this mailbox."""
        with self.lock:
            return self.policy_group is None or key in self.group(self.policy_group).members


# --- token endpoint ----------------------------------------------------------------------------


def client_credentials(state: IdentityState, form: Any, base_url: str) -> Any:
    """The `client_credentials` grant: an app token with the tenant's granted permissions."""
    secret = form.get("client_secret")
    if secret is None and request.authorization is not None:
        secret = request.authorization.password
    if secret is None:
        return aad_error("invalid_client", 7000218, status=401)
    if state.client_secret is None or secret != state.client_secret:
        return aad_error("invalid_client", 7000215, status=401)
    if state.app_disabled:
        return aad_error("unauthorized_client", 7000112)
    scopes = form.get("scope", "").split()
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        return aad_error("invalid_scope", 1002012)
    resource = scopes[0][: -len("/.default")].rstrip("/")
    # Graph by its well-known names, or the sandbox's own Graph host (a loopback address).
    if resource not in GRAPH_RESOURCES and urlsplit(resource).hostname not in LOOPBACK_HOSTS:
        return aad_error("invalid_resource", 500011)
    with state.lock:
        roles = tuple(sorted(state.app_permissions))
        access = "sbx-app-" + secrets.token_urlsafe(24)
        state.access[access] = AccessRecord(
            Grant("", roles, app=True), time.time() + state.access_token_lifetime
        )
    return {
        "token_type": "Bearer",
        "expires_in": state.access_token_lifetime,
        "ext_expires_in": state.access_token_lifetime,
        "access_token": access,
    }


# --- Graph -------------------------------------------------------------------------------------


def app_mailbox(ctx: GraphContext, grant: Grant, ref: str | None) -> Mailbox:
    """The mailbox an app token names (`/users/{id|upn}`); `/me` means nothing without a user."""
    if ref is None:
        raise ODataError(
            400, "BadRequest", "/me request is only valid with delegated authentication flow."
        )
    wanted = unquote(ref).lower()
    with ctx.lock:
        for box in ctx.mailboxes.values():
            if wanted in (box.email.lower(), box.user_id):
                return box
    raise ODataError(404, "Request_ResourceNotFound", f"Resource '{ref}' does not exist.")


def check_app_mail(ctx: GraphContext, grant: Grant, mailbox: Mailbox) -> None:
    """403 unless the app may read this mailbox's mail (permission, access policy)."""
    if not APP_MAIL.intersection(grant.scopes):
        raise ODataError(
            403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )
    if not ctx.directory.app_may_read(mailbox.key):
        raise ODataError(403, "ErrorAccessDenied", POLICY_DENIED)


def reads_user(grant: Grant) -> bool:
    """Whether a token may read a user's profile (delegated User.Read, or an app's roles)."""
    if grant.app:
        return bool(APP_USERS.intersection(grant.scopes))
    return "User.Read" in grant.scopes


def register_directory_routes(app: Flask, ctx: GraphContext) -> None:
    """`/users`, `/groups`, `/groups/{id}/members/microsoft.graph.user` on the Graph host."""

    @app.get("/v1.0/users")
    def users() -> Any:
        grant = _bearer(ctx)
        if not isinstance(grant, Grant):
            return grant
        ctx.meter.count("graph.users")
        if not (grant.app and APP_USERS.intersection(grant.scopes)):
            return graph_error(403, "Authorization_RequestDenied", DENIED)
        with ctx.lock:
            boxes = sorted(ctx.mailboxes.values(), key=lambda b: b.email.lower())
            listed = [_user(ctx, box) for box in boxes]
        return _page(ctx, "users", listed)

    @app.get("/v1.0/groups")
    def groups() -> Any:
        grant = _bearer(ctx)
        if not isinstance(grant, Grant):
            return grant
        ctx.meter.count("graph.groups")
        if not (grant.app and APP_GROUPS.intersection(grant.scopes)):
            return graph_error(403, "Authorization_RequestDenied", DENIED)
        name = _display_name_filter(request.args.get("$filter"))
        with ctx.directory.lock:
            found = [
                {"id": g.id, "displayName": g.display_name}
                for g in ctx.directory.groups.values()
                if name is None or g.display_name == name
            ]
        return _page(ctx, "groups", found)

    @app.get("/v1.0/groups/<group_id>/members/microsoft.graph.user")
    def group_members(group_id: str) -> Any:
        grant = _bearer(ctx)
        if not isinstance(grant, Grant):
            return grant
        ctx.meter.count("graph.group_members")
        if not (grant.app and APP_GROUPS.intersection(grant.scopes)):
            return graph_error(403, "Authorization_RequestDenied", DENIED)
        with ctx.directory.lock:
            group = ctx.directory.groups.get(group_id)
            members = set(group.members) if group is not None else None
        if members is None:
            return graph_error(
                404, "Request_ResourceNotFound", f"Resource '{group_id}' does not exist."
            )
        with ctx.lock:
            boxes = sorted(
                (b for k, b in ctx.mailboxes.items() if k in members), key=lambda b: b.email
            )
            listed = [_user(ctx, box) for box in boxes]
        return _page(ctx, f"groups/{group_id}/members/microsoft.graph.user", listed)


def _bearer(ctx: GraphContext) -> Grant | Any:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    grant = ctx.identity.bearer(token.strip()) if scheme.lower() == "bearer" else None
    if grant is None:
        return graph_error(
            401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
        )
    return grant


def _user(ctx: GraphContext, box: Mailbox) -> dict[str, Any]:
    return {
        "id": box.user_id,
        "displayName": box.display_name,
        "mail": box.email,
        "userPrincipalName": box.email,
        "accountEnabled": box.key not in ctx.directory.disabled,
        "businessPhones": [],
        "jobTitle": None,
    }


def _page(ctx: GraphContext, path: str, items: list[dict[str, Any]]) -> Any:
    """One page of a directory collection: `$select`, `$top` (1..999, default 100), and a
    `@odata.nextLink` with an opaque `$skiptoken` while more remain."""
    args = request.args
    if args.get("$filter") and path != "groups":
        raise ODataError(400, "Request_UnsupportedQuery", "Unsupported query.")
    try:
        top = int(args.get("$top", "100"))
        skip = int(_unskip(args.get("$skiptoken", "")))
    except ValueError:
        raise ODataError(400, "Request_BadRequest", "Invalid paging parameters.") from None
    if not 1 <= top <= MAX_TOP:
        raise ODataError(
            400,
            "Request_BadRequest",
            f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive.",
        )
    wanted = _select(args.get("$select"))
    page = [{k: v for k, v in item.items() if k in wanted} for item in items[skip : skip + top]]
    body: dict[str, Any] = {"@odata.context": f"{ctx.base_url()}/v1.0/$metadata#{path}"}
    body["value"] = page
    if skip + top < len(items):
        query = {k: v for k, v in args.items() if k != "$skiptoken"}
        query["$skiptoken"] = _skiptoken(skip + top)
        body["@odata.nextLink"] = (
            f"{ctx.base_url()}/v1.0/{path}?{urlencode(query, quote_via=quote, safe='$')}"
        )
    return body


def _select(text: str | None) -> Iterable[str]:
    if not text:
        return (*USER_PROPERTIES, "businessPhones", "jobTitle")
    return {"id", *(s.strip() for s in text.split(",") if s.strip())}


def _skiptoken(offset: int) -> str:
    return f"RFNwdAIAAQAAA{offset:08d}"


def _unskip(token: str) -> str:
    if not token:
        return "0"
    if not token.startswith("RFNwdAIAAQAAA"):
        raise ValueError(token)
    return token[len("RFNwdAIAAQAAA") :]


def _display_name_filter(text: str | None) -> str | None:
    """`displayName eq 'Sales'` (the only $filter the sandbox takes on groups)."""
    if not text:
        return None
    prop, _, rest = text.strip().partition(" eq ")
    rest = rest.strip()
    if prop.strip() != "displayName" or len(rest) < 2 or rest[0] != "'" or rest[-1] != "'":
        raise ODataError(400, "Request_UnsupportedQuery", "Unsupported query.")
    return rest[1:-1].replace("''", "'")
