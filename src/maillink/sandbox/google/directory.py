"""The Admin SDK Directory API of the sandbox: `GET /admin/directory/v1/users` (users.list).

As Google answers it: the bearer token must carry a directory scope (403 insufficientPermissions
otherwise) and stand for an admin of the Workspace (403 "Not Authorized to access this
resource/api" otherwise); `customer` (my_customer or the customer id) or `domain` is required;
pages of `maxResults` (1–500, default 100) users ordered by address, with `nextPageToken`.
The `fields` parameter is accepted and not applied (full resources are answered).
"""

from __future__ import annotations

import threading

from flask import Flask, Response, request

from maillink.sandbox._server import Meter
from maillink.sandbox.google.delegation import CUSTOMER_ID, SCOPE_DIRECTORY_USERS, Workspace
from maillink.sandbox.google.errors import (
    GoogleApiError,
    QueryArgs,
    bad_request,
    forbidden,
    json_response,
    unauthenticated,
)
from maillink.sandbox.google.gmail import decode_token, encode_token
from maillink.sandbox.google.oauth import OAuthState

USERS_PATH = "/admin/directory/v1/users"
DIRECTORY_SCOPES = frozenset(
    {SCOPE_DIRECTORY_USERS, "https://www.googleapis.com/auth/admin.directory.user"}
)
DEFAULT_PAGE = 100
MAX_PAGE = 500
_PARAMS = frozenset(
    {"customer", "domain", "maxResults", "pageToken", "orderBy", "sortOrder", "showDeleted"}
)
NOT_AUTHORIZED = "Not Authorized to access this resource/api"


def register_directory_routes(
    app: Flask, workspace: Workspace, oauth: OAuthState, lock: threading.RLock, meter: Meter
) -> None:
    """Mount users.list on `app`."""

    def list_users() -> Response:
        args = QueryArgs(request.args, _PARAMS)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        with lock:
            meter.count("directory.users.list")
            grant = oauth.grant_for(value.strip()) if scheme.lower() == "bearer" else None
            if grant is None:
                raise unauthenticated()
            if not DIRECTORY_SCOPES & set(grant.scopes):
                raise forbidden(
                    "Request had insufficient authentication scopes.", "insufficientPermissions"
                )
            caller = workspace.users.get(grant.email)
            if caller is None or not caller.admin:
                raise forbidden(NOT_AUTHORIZED)
            customer, domain = args.string("customer"), args.string("domain")
            if not customer and not domain:
                raise GoogleApiError(400, "Bad Request", "badRequest")
            if customer and customer not in ("my_customer", CUSTOMER_ID):
                raise forbidden(NOT_AUTHORIZED)
            if domain and domain.lower() not in workspace.domains:
                raise forbidden(NOT_AUTHORIZED)
            size = args.integer("maxResults", DEFAULT_PAGE, MAX_PAGE)
            token = args.string("pageToken")
            start = 0
            if token:
                (offset,) = decode_token(token, "users", 2)
                if not isinstance(offset, int) or offset < 0:
                    raise bad_request("Invalid pageToken")
                start = offset
            users = workspace.listed(domain.lower() if domain else None)
            page = users[start : start + size]
            body: dict[str, object] = {"kind": "admin#directory#users", "etag": '"sandbox"'}
            if page:
                body["users"] = [user.resource() for user in page]
            if start + size < len(users):
                body["nextPageToken"] = encode_token("users", start + size)
        return json_response(body)

    app.add_url_rule(USERS_PATH, "directory_users_list", list_users, methods=["GET"])
