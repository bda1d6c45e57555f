"""HubSpot through a public app: the OAuth authorization-code flow (`maillink crm connect
hubspot`), the refresh token kept encrypted in the store, and access tokens refreshed on demand.

The consent runs in the admin's browser with a loopback redirect (like `maillink connect gmail`):
a one-time `state` and a PKCE S256 challenge (HubSpot's v3 token endpoint takes the
`code_verifier`) bind the code to this connection. HubSpot's refresh tokens do not rotate and
last until the app is uninstalled; its access tokens live 30 minutes. `OAuthTokens` hands the
current access token to `HubSpotHTTP`, refreshes it shortly before it expires, and once more
when HubSpot answers 401; a refused refresh (uninstalled app, deleted token) is one
`CRMAuthError` that says to reconnect. Every endpoint comes from credentials.json `hubspot`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from maillink.crm.base import CRMAuthError, CRMUnavailable
from maillink.crm.hubspot_http import check_base_url
from maillink.errors import ConnectError

DEFAULT_AUTH_URL = "https://app.hubspot.com/oauth/authorize"
DEFAULT_TOKEN_URL = "https://api.hubapi.com/oauth/v3/token"
DEFAULT_PORT = 8757  # HubSpot matches the redirect URL exactly: the app lists this one
CALLBACK_PATH = "/oauth-callback"
# Least privilege for what the adapter does: contacts read (persons) and write (email
# engagements are contact-scoped objects; a contact is created only when configured to),
# deals, leads and companies read (items, the primary contact's company), owners read (the
# rep who owns each email). `oauth` is the scope HubSpot asks of every public app.
SCOPES = (
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.deals.read",
    "crm.objects.leads.read",
    "crm.objects.companies.read",
    "crm.objects.owners.read",
)
STATE_NAME = "hubspot.oauth"  # the store's crm_state row of the grant, encrypted (app.py)
REFRESH_MARGIN = 60.0  # seconds before expiry when an access token is refreshed anyway
RECONNECT = "reconnect HubSpot: maillink crm connect hubspot"
SUCCESS_PAGE = "maillink: HubSpot is connected. You can close this window."


class HubSpotConnectError(ConnectError):
    """The HubSpot consent did not complete; the message says why and what to do."""


@dataclass(frozen=True)
class OAuthApp:
    """The public app (credentials.json `hubspot` client_id, client_secret, auth_url, token_url)."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_url: str = DEFAULT_AUTH_URL
    token_url: str = DEFAULT_TOKEN_URL


@dataclass(frozen=True)
class Grant:
    """What one consent gave: the refresh token (a secret) and the account it is for."""

    refresh_token: str = field(repr=False)
    hub_id: int | None
    scopes: tuple[str, ...]

    def dumps(self) -> str:
        return json.dumps(
            {"refresh_token": self.refresh_token, "hub_id": self.hub_id, "scopes": self.scopes}
        )

    @classmethod
    def loads(cls, text: str) -> Grant:
        data = json.loads(text)
        return cls(str(data["refresh_token"]), data.get("hub_id"), tuple(data.get("scopes") or ()))


# -- the token endpoint ---------------------------------------------------------------------------


def _token_call(app: OAuthApp, form: dict[str, str], timeout: float) -> dict[str, Any]:
    """POST the form to the token endpoint (client credentials in the body, as HubSpot wants);
    `CRMAuthError` for a refusal, `CRMUnavailable` when HubSpot cannot be reached."""
    body = {"client_id": app.client_id, "client_secret": app.client_secret, **form}
    try:
        answer = requests.post(app.token_url, data=body, timeout=timeout)
    except requests.RequestException as exc:
        raise CRMUnavailable(
            f"HubSpot's token endpoint is unreachable: {type(exc).__name__}"
        ) from None
    try:
        data = answer.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CRMUnavailable(f"HubSpot's token endpoint answered {answer.status_code} unreadably")
    if answer.status_code >= 500:
        raise CRMUnavailable(f"HubSpot's token endpoint answered {answer.status_code}")
    if answer.status_code != 200 or not data.get("access_token"):
        reason = data.get("status") or data.get("error") or answer.status_code
        detail = data.get("message") or data.get("error_description") or "no detail"
        raise CRMAuthError(f"HubSpot refused the token request ({reason}: {detail})")
    return data


class OAuthTokens:
    """The access tokens of one grant, refreshed on demand; thread-safe. `HubSpotHTTP` calls
    `current()` before each request and `refresh(stale)` after a 401."""

    def __init__(
        self,
        app: OAuthApp,
        refresh_token: str,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.app = app
        self._refresh_token = refresh_token
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires_at = 0.0
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"OAuthTokens(client_id={self.app.client_id!r})"

    def current(self) -> str:
        with self._lock:
            if self._access is None or self._clock() >= self._expires_at - REFRESH_MARGIN:
                self._refresh_locked()
            assert self._access is not None
            return self._access

    def refresh(self, stale: str) -> str:
        """A new access token, unless another thread already replaced `stale`."""
        with self._lock:
            if self._access is None or self._access == stale:
                self._refresh_locked()
            assert self._access is not None
            return self._access

    def _refresh_locked(self) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token}
        try:
            data = _token_call(self.app, form, self._timeout)
        except CRMAuthError as exc:
            raise CRMAuthError(f"{exc}; {RECONNECT}") from None
        self.refreshes += 1
        self._access = str(data["access_token"])
        self._expires_at = self._clock() + float(data.get("expires_in") or 1800)


# -- the consent ----------------------------------------------------------------------------------


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Silent(WSGIRequestHandler):
    """No request log: the redirect's URL carries the one-time code."""

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class _Callback:
    """The loopback server's one job: take the redirect carrying the code and the state."""

    def __init__(self) -> None:
        self.query: dict[str, str] | None = None
        self.done = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        req = Request(environ)
        if req.path != CALLBACK_PATH or self.done.is_set():
            return Response("not found", status=404)(environ, start_response)
        self.query = {k: v[0] for k, v in parse_qs(req.query_string.decode()).items()}
        self.done.set()
        page = SUCCESS_PAGE if "code" in self.query else "maillink: HubSpot was not connected."
        return Response(page, mimetype="text/plain")(environ, start_response)


def connect_hubspot(
    app: OAuthApp,
    *,
    open_browser: bool = True,
    port: int = DEFAULT_PORT,
    scopes: tuple[str, ...] = SCOPES,
    timeout: float = 300.0,
    announce: Callable[[str], object] | None = None,
) -> Grant:
    """Run the consent and return the grant. The redirect comes back to
    http://localhost:`port`/oauth-callback (0: any free port; HubSpot needs the exact URL
    listed in the app's Auth settings). Without `open_browser` the authorization URL is printed
    on a line of its own on stdout; `announce` takes it instead when given (tests, the demo)."""
    for url in (app.auth_url, app.token_url):
        try:
            check_base_url(url)
        except ValueError:
            raise HubSpotConnectError(
                f"{url!r} must be https:// (http:// only for loopback)"
            ) from None
    callback = _Callback()
    try:
        server: BaseWSGIServer = make_server(
            "127.0.0.1", port, callback, threaded=True, request_handler=_Silent
        )
    except OSError as exc:
        raise HubSpotConnectError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    redirect_uri = f"http://localhost:{server.server_port}{CALLBACK_PATH}"
    state = secrets.token_urlsafe(24)
    verifier, challenge = _pkce()
    query = {
        "client_id": app.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    separator = "&" if urlsplit(app.auth_url).query else "?"
    url = f"{app.auth_url}{separator}{urlencode(query)}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        (announce or _announcer(open_browser))(url)
        if not callback.done.wait(timeout):
            raise HubSpotConnectError(
                f"no answer from the browser within {timeout:g} s; run the connection again"
            )
    finally:
        server.shutdown()
        server.server_close()
    given = callback.query or {}
    if not secrets.compare_digest(given.get("state", ""), state):
        raise HubSpotConnectError(
            "the redirect carried a state this connection did not send: refused (a forged or "
            "stale request); run the connection again"
        )
    if "code" not in given:
        why = given.get("error_description") or given.get("error") or "no code in the redirect"
        raise HubSpotConnectError(f"HubSpot did not grant access ({why})")
    form = {
        "grant_type": "authorization_code",
        "code": given["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    try:
        data = _token_call(app, form, 30.0)
    except (CRMAuthError, CRMUnavailable) as exc:
        raise HubSpotConnectError(str(exc)) from None
    refresh_token = data.get("refresh_token")
    if not refresh_token:
        raise HubSpotConnectError("HubSpot returned no refresh token; run the connection again")
    granted = tuple(str(s) for s in data.get("scopes") or ())
    missing = [s for s in scopes if granted and s not in granted]
    if missing:
        raise HubSpotConnectError(
            f"the consent did not grant {', '.join(missing)}: connect again and allow them"
        )
    hub_id = data.get("hub_id")
    return Grant(str(refresh_token), hub_id if isinstance(hub_id, int) else None, granted)


def _announcer(open_browser: bool) -> Callable[[str], None]:
    def announce(url: str) -> None:
        if open_browser and webbrowser.open(url):
            print("Opened HubSpot's consent page in your browser.", file=sys.stderr)
            return
        print("Open this URL in a browser to connect HubSpot:", file=sys.stderr)
        print(url, flush=True)

    return announce
