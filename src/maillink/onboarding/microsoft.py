"""Connect a Microsoft 365 / Outlook mailbox with MSAL, and keep its tokens fresh afterwards.

`connect_microsoft` runs the authorization-code flow with PKCE on a loopback redirect (or the
device-code flow, for a machine without a browser) and returns the mailbox address, read from
Graph's /me, with MSAL's serialized token cache to store encrypted. `MicrosoftTokenSource` gives
access tokens for that account from the cache, saving it whenever MSAL rotated the refresh
token; a refused refresh (invalid_grant, interaction_required) raises `NeedsReauth`.

The authority and Graph URL come from configuration (national clouds, the sandbox). MSAL's
instance discovery stays on for Microsoft's own login hosts and is off for any other authority.
"""

from __future__ import annotations

import functools
import http.server
import sys
import time
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

import msal
import requests

from maillink.errors import ConnectError
from maillink.onboarding.microsoft_msal import (
    MICROSOFT_LOGIN_HOSTS,
    SCOPES,
    MicrosoftTokenSource,
    build_app,
    check_authority,
    describe,
    uses_instance_discovery,
)
from maillink.providers.graph_api import CABundleSession, check_url

__all__ = [
    "MICROSOFT_LOGIN_HOSTS",
    "SCOPES",
    "ConnectedMicrosoftAccount",
    "MicrosoftConnectError",
    "MicrosoftTokenSource",
    "build_app",
    "connect_microsoft",
    "connected_account",
    "uses_instance_discovery",
]

SUCCESS_PAGE = "maillink: your mailbox is connected. You can close this window."


class TextOut(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class MicrosoftConnectError(ConnectError):
    """The connection did not complete; the message says why and what to do."""


@dataclass(frozen=True)
class ConnectedMicrosoftAccount:
    email: str
    token_cache: str = field(repr=False)  # MSAL's SerializableTokenCache, serialized: a secret
    home_account_id: str
    scopes: tuple[str, ...]


def connect_microsoft(
    client_id: str,
    *,
    authority: str,
    graph_url: str,
    client_secret: str | None = None,
    open_browser: bool = True,
    device_code: bool = False,
    port: int = 0,
    timeout: float = 300,
    out: TextOut = sys.stdout,
    ca_bundle: str | None = None,
    scopes: Sequence[str] = SCOPES,
    announce: Callable[[str], None] | None = None,
) -> ConnectedMicrosoftAccount:
    """Sign the user in, and return the mailbox's address and MSAL token cache.

    Without `device_code`: the authorization URL is opened in the browser (or, with
    `open_browser` False, printed on a line of its own on `out`), and the redirect comes back
    to a one-shot server on 127.0.0.1:`port` (0: any free port), as http://localhost:PORT.
    With `device_code`: the verification URL and the code are printed on `out`, one a line.
    Guidance for people goes to stderr. `announce`, when given, takes the authorization URL
    instead (a caller that drives the consent itself, like the demo).
    """
    check_url(graph_url, "the Graph URL")
    check_authority(authority)
    cache = msal.SerializableTokenCache()
    try:
        app = build_app(
            client_id,
            authority=authority,
            client_secret=client_secret,
            token_cache=cache,
            ca_bundle=ca_bundle,
        )
        if device_code:
            result = _device_flow(app, scopes, timeout, out)
        else:
            if announce is None:
                announce = functools.partial(_announce, open_browser=open_browser, out=out)
            result = _auth_code_flow(app, scopes, announce, port, timeout)
    except (ValueError, requests.RequestException) as error:
        raise MicrosoftConnectError(
            f"could not reach the Microsoft sign-in at {authority}: {error}"
        ) from None
    return connected_account(app, cache, result, scopes, graph_url=graph_url, ca_bundle=ca_bundle)


def connected_account(
    app: msal.ClientApplication,
    cache: msal.SerializableTokenCache,
    result: Mapping[str, Any],
    scopes: Sequence[str],
    *,
    graph_url: str,
    ca_bundle: str | None = None,
) -> ConnectedMicrosoftAccount:
    """The connected mailbox from MSAL's answer to a sign-in (the CLI's flows and the web
    app's): every scope granted, the address read from Graph /me, the token cache to store."""
    if "access_token" not in result:
        raise MicrosoftConnectError(f"Microsoft refused the connection ({describe(result)})")
    granted = _granted(result, scopes)
    missing = [s for s in scopes if s.lower() not in {g.lower() for g in granted}]
    if missing:
        raise MicrosoftConnectError(
            f"the consent did not grant {', '.join(missing)}: connect again and accept the permissions"
        )
    email = _mailbox_address(graph_url, str(result["access_token"]), ca_bundle)
    account = _account(app, result)
    return ConnectedMicrosoftAccount(email, cache.serialize(), account["home_account_id"], granted)


# --- flows ------------------------------------------------------------------------------------


class _Redirect(http.server.BaseHTTPRequestHandler):
    """The loopback end of the sign-in: the answer comes as a form POST (response_mode=form_post,
    so the code never sits in a URL or the browser's history); GETs are not the answer."""

    received: dict[str, str] | None = None

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_error(404)  # a favicon, a probe, a code in a query string: not the answer

    def do_POST(self) -> None:  # noqa: N802
        length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
        body = self.rfile.read(length).decode("utf-8", "replace")
        params = {k: v[0] for k, v in parse_qs(body).items()}
        if not {"code", "error", "state"}.intersection(params):
            self.send_error(400)
            return
        type(self).received = params
        page = SUCCESS_PAGE if "code" in params else "maillink: the connection was refused."
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _wait_for_redirect(
    server: http.server.HTTPServer, handler: type[_Redirect], timeout: float
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while handler.received is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MicrosoftConnectError(
                f"no answer from the browser within {timeout:g} s; run the connection again"
            )
        server.timeout = min(remaining, 1.0)
        server.handle_request()
    return handler.received


def _auth_code_flow(
    app: msal.ClientApplication,
    scopes: Sequence[str],
    announce: Callable[[str], None],
    port: int,
    timeout: float,
) -> dict[str, Any]:
    handler = type("_OneRedirect", (_Redirect,), {"received": None})
    with http.server.HTTPServer(("127.0.0.1", port), handler) as server:
        redirect_uri = f"http://localhost:{server.server_address[1]}"
        flow = app.initiate_auth_code_flow(
            list(scopes),
            redirect_uri=redirect_uri,
            prompt="select_account",
            response_mode="form_post",
        )
        announce(flow["auth_uri"])
        params = _wait_for_redirect(server, handler, timeout)
    try:
        result = app.acquire_token_by_auth_code_flow(flow, params, scopes=list(scopes))
    except ValueError:
        raise MicrosoftConnectError(
            "the redirect carried a state this connection did not send: refused (a forged or "
            "stale request); run the connection again"
        ) from None
    return dict(result)


def _device_flow(
    app: msal.ClientApplication, scopes: Sequence[str], timeout: float, out: TextOut
) -> dict[str, Any]:
    if not isinstance(app, msal.PublicClientApplication):
        raise MicrosoftConnectError(
            "the device-code flow needs a public client: remove microsoft.client_secret from "
            "credentials.json, or connect without --device-code"
        )
    flow = app.initiate_device_flow(scopes=list(scopes))
    if "user_code" not in flow:
        raise MicrosoftConnectError(f"Microsoft refused the device code ({describe(flow)})")
    print(flow.get("message") or "Open the address below and enter the code:", file=sys.stderr)
    out.write(f"{flow['verification_uri']}\n{flow['user_code']}\n")
    out.flush()
    flow["expires_at"] = min(float(flow["expires_at"]), time.time() + timeout)
    result = dict(app.acquire_token_by_device_flow(flow))
    if result.get("error") in ("authorization_pending", "expired_token", "slow_down"):
        raise MicrosoftConnectError(
            f"the code was not entered within {timeout:g} s; run the connection again"
        )
    return result


def _announce(url: str, open_browser: bool, out: TextOut) -> None:
    if open_browser:
        print(
            "Opening your browser to connect the mailbox; if it does not open, visit:",
            file=sys.stderr,
        )
        webbrowser.open(url, new=1, autoraise=True)
    else:
        print("Open this address in a browser to connect the mailbox:", file=sys.stderr)
    out.write(url + "\n")
    out.flush()


# --- results ----------------------------------------------------------------------------------


def _granted(result: Mapping[str, Any], requested: Sequence[str]) -> tuple[str, ...]:
    scope = result.get("scope")
    if not isinstance(scope, str):
        return tuple(requested)
    names = [w.rsplit("/", 1)[-1] if "://" in w else w for w in scope.split()]
    return tuple(
        n
        for n in dict.fromkeys(names)
        if n.lower() not in ("openid", "profile", "email", "offline_access")
    )


def _mailbox_address(graph_url: str, access_token: str, ca_bundle: str | None) -> str:
    session = CABundleSession(ca_bundle, 60.0)
    try:
        response = session.get(
            graph_url.rstrip("/") + "/me",
            params={"$select": "mail,userPrincipalName"},
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as error:
        raise MicrosoftConnectError(
            f"could not read the mailbox address from Graph /me: {error}"
        ) from None
    email = str(body.get("mail") or body.get("userPrincipalName") or "").strip().lower()
    if not email:
        raise MicrosoftConnectError("Graph's /me answer holds neither mail nor userPrincipalName")
    return email


def _account(app: msal.ClientApplication, result: Mapping[str, Any]) -> dict[str, Any]:
    claims = result.get("id_token_claims") or {}
    accounts = app.get_accounts()
    for account in accounts:
        if claims.get("oid") and account.get("local_account_id") == claims.get("oid"):
            return dict(account)
    if len(accounts) == 1:
        return dict(accounts[0])
    raise MicrosoftConnectError("MSAL kept no account for this sign-in; run the connection again")
