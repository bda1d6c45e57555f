"""Connect a Gmail mailbox: OAuth 2.0 for installed apps, with a loopback redirect and PKCE.

The authorization and token endpoints come from the client file, the mailbox address from
users.getProfile at the configured Gmail endpoint, so the same code runs against Google, the
sandbox or a test double. Plain http is accepted only for loopback hosts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import webbrowser
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from google_auth_oauthlib.flow import InstalledAppFlow, WSGITimeoutError
from oauthlib.oauth2.rfc6749.errors import MismatchingStateError, OAuth2Error

from maillink.errors import ConnectError
from maillink.providers.base import ProviderError
from maillink.providers.gmail_api import SCOPE_METADATA, GmailApi, check_endpoint
from maillink.providers.retry import RetryPolicy

SUCCESS_PAGE = "maillink: your mailbox is connected. You can close this window."


class TextOut(Protocol):
    """Where the authorization URL is written: stdout, or anything with write and flush."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class GoogleConnectError(ConnectError):
    """The connection did not complete; the message says why and what to do."""


@dataclass(frozen=True)
class ConnectedGoogleAccount:
    email: str
    refresh_token: str = field(repr=False)  # a secret: never in logs or reprs
    scopes: tuple[str, ...]


class _LoopbackFlow(InstalledAppFlow):
    """InstalledAppFlow that hands the authorization URL to `announce` instead of printing it."""

    announce: Callable[[str], None]

    def authorization_url(self, **kwargs: Any) -> tuple[str, str]:
        url, state = super().authorization_url(**kwargs)
        self.announce(url)
        return url, state


def connect_google(
    client_config: dict[str, Any],
    *,
    api_endpoint: str,
    open_browser: bool = True,
    scopes: Sequence[str] = (SCOPE_METADATA,),
    port: int = 0,
    timeout: float | None = 300,
    out: TextOut = sys.stdout,
    announce: Callable[[str], None] | None = None,
) -> ConnectedGoogleAccount:
    """Run the consent in the user's browser and return the mailbox's address and refresh token.

    With `open_browser` False, the authorization URL is printed on a line of its own on `out`
    (guidance goes to stderr), so that a script can read it; the redirect comes back to a
    one-shot server on 127.0.0.1:`port` (0: any free port). The state sent is checked on the
    redirect and the code is bound to a PKCE S256 verifier. `announce`, when given, takes the
    authorization URL instead (a caller that drives the consent itself, like the demo).
    """
    section = _client_section(client_config)
    check_endpoint(section["auth_uri"], "the Google auth_uri")
    token_uri = check_endpoint(section["token_uri"], "the Google token_uri")
    check_endpoint(api_endpoint, "the Gmail API endpoint")

    flow = _LoopbackFlow.from_client_config(
        client_config, scopes=list(scopes), autogenerate_code_verifier=True
    )
    flow.announce = announce or _announcer(open_browser, out)
    try:
        with _oauthlib_transport(token_uri):
            credentials = flow.run_local_server(
                host="127.0.0.1",
                port=port,
                open_browser=False,  # `announce` opens it, so the URL goes where we say
                authorization_prompt_message=None,
                success_message=SUCCESS_PAGE,
                timeout_seconds=timeout,
                access_type="offline",
                prompt="consent",
            )
    except MismatchingStateError:
        raise GoogleConnectError(
            "the redirect carried a state this connection did not send: refused (a forged or "
            "stale request); run the connection again"
        ) from None
    except WSGITimeoutError:
        raise GoogleConnectError(
            f"no answer from the browser within {timeout} s; run the connection again"
        ) from None
    except OAuth2Error as error:
        raise GoogleConnectError(
            f"Google refused the connection ({error.error}: {error.description or 'no detail'})"
        ) from None

    if not credentials.refresh_token:
        raise GoogleConnectError(
            "Google returned no refresh token: remove maillink's access at "
            "https://myaccount.google.com/permissions and connect again"
        )
    granted = _granted_scopes(flow.oauth2session.token, scopes)
    missing = [scope for scope in scopes if scope not in granted]
    if missing:
        raise GoogleConnectError(
            f"the consent did not grant {', '.join(missing)}: connect again and allow maillink "
            "to view your email message metadata"
        )
    email = mailbox_address(credentials, api_endpoint)
    return ConnectedGoogleAccount(email, credentials.refresh_token, tuple(granted))


def mailbox_address(credentials: Any, api_endpoint: str) -> str:
    """The connected mailbox's address, from Gmail's profile (what the consent was given for,
    whatever address the user typed)."""
    try:
        profile = GmailApi(
            credentials,
            api_endpoint=api_endpoint,
            http_timeout=60.0,
            batch_size=1,
            policy=RetryPolicy(),
        ).profile()
    except ProviderError as error:
        raise GoogleConnectError(f"could not read the mailbox address: {error}") from error
    email = str(profile.get("emailAddress", "")).strip().lower()
    if not email:
        raise GoogleConnectError("Gmail's profile answer holds no emailAddress")
    return email


def _client_section(client_config: Mapping[str, Any]) -> Mapping[str, Any]:
    section = client_config.get("installed") or client_config.get("web")
    if not isinstance(section, Mapping):
        raise ValueError('the Google client file must hold an "installed" (or "web") section')
    for key in ("client_id", "auth_uri", "token_uri"):
        if not section.get(key):
            raise ValueError(f'the Google client file has no "{key}"')
    return section


def _announcer(open_browser: bool, out: TextOut) -> Callable[[str], None]:
    def announce(url: str) -> None:
        if open_browser:
            print("Opening your browser to connect the mailbox; if it does not open, visit:",
                  file=sys.stderr)  # fmt: skip
            webbrowser.open(url, new=1, autoraise=True)
        else:
            print("Open this address in a browser to connect the mailbox:", file=sys.stderr)
        out.write(url + "\n")
        out.flush()

    return announce


@contextlib.contextmanager
def _oauthlib_transport(token_uri: str) -> Iterator[None]:
    """oauthlib's settings for this call only, restored after.

    oauthlib refuses http token endpoints: allowed here for a loopback token_uri (already
    checked), never otherwise. Scope changes are relaxed so that a consent granting fewer
    scopes (Google's granular consent) reaches our own check, with a clear message.
    """
    wanted = {"OAUTHLIB_RELAX_TOKEN_SCOPE": "1"}
    if urlsplit(token_uri).scheme == "http":
        wanted["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _granted_scopes(token: Mapping[str, Any], requested: Sequence[str]) -> list[str]:
    scope = token.get("scope")
    if isinstance(scope, str):
        return scope.split()
    if isinstance(scope, list | tuple):
        return [str(s) for s in scope]
    return list(requested)  # no scope in the answer: what was asked was granted (RFC 6749 §5.1)
