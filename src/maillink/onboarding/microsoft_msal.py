"""The MSAL side of Microsoft sign-in: the application for a configuration (authority from
configuration, instance discovery only for Microsoft's login hosts, the CA bundle honoured) and
`MicrosoftTokenSource`, the access tokens of a connected account from its token cache."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

from maillink.providers.base import NeedsReauth, ProviderError
from maillink.providers.graph_api import CABundleSession, TokenUnavailable

SCOPES = ("Mail.ReadBasic", "User.Read")
# Microsoft's login hosts (public and national clouds): MSAL's own list, and the older names.
MICROSOFT_LOGIN_HOSTS = frozenset(WELL_KNOWN_AUTHORITY_HOSTS) | frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
    }
)
REAUTH_ERRORS = frozenset(
    {"invalid_grant", "interaction_required", "consent_required", "login_required"}
)


def uses_instance_discovery(authority: str) -> bool:
    """MSAL's instance discovery: on for Microsoft's login hosts, off for any other authority."""
    host = (urlsplit(authority).hostname or "").lower()
    return host in MICROSOFT_LOGIN_HOSTS


def check_authority(authority: str) -> None:
    """MSAL takes https authorities only: refuse anything else with a clear error."""
    if urlsplit(authority).scheme != "https":
        raise ValueError(
            f"the Microsoft authority {authority!r} must be https (MSAL accepts no other)"
        )


def build_app(
    client_id: str,
    *,
    authority: str,
    client_secret: str | None = None,
    token_cache: msal.TokenCache | None = None,
    ca_bundle: str | None = None,
    http_timeout: float = 60.0,
) -> msal.ClientApplication:
    """The MSAL application for this configuration (confidential when a secret is configured)."""
    check_authority(authority)
    options: dict[str, Any] = {
        "authority": authority,
        "instance_discovery": uses_instance_discovery(authority),
        "http_client": CABundleSession(ca_bundle, http_timeout),
        "token_cache": token_cache,
    }
    if client_secret:
        return msal.ConfidentialClientApplication(
            client_id, client_credential=client_secret, **options
        )
    return msal.PublicClientApplication(client_id, **options)


def describe(result: Mapping[str, Any]) -> str:
    error = str(result.get("error") or "no token")
    description = str(result.get("error_description") or "").strip().splitlines()
    first = description[0].split(" Trace ID:")[0] if description else "no detail"
    return f"{error}: {first}"


# --- tokens for the sync ---------------------------------------------------------------------


class MicrosoftTokenSource:
    """Access tokens for one connected account, from its MSAL token cache.

    `load()` gives the cache (decrypted by the caller), `save(text)` keeps it (the caller
    encrypts it) whenever MSAL changed it: a rotated refresh token is never lost. Use it as the
    `token_source` of a `GraphProvider`; `invalidate()` makes the next call refresh.
    """

    def __init__(
        self,
        client_id: str,
        *,
        authority: str,
        home_account_id: str,
        load: Callable[[], str],
        save: Callable[[str], None],
        client_secret: str | None = None,
        scopes: Sequence[str] = SCOPES,
        ca_bundle: str | None = None,
        http_timeout: float = 60.0,
    ) -> None:
        self._client_id = client_id
        self._authority = authority
        self._home = home_account_id
        self._load = load
        self._save = save
        self._secret = client_secret
        self._scopes = list(scopes)
        self._ca_bundle = ca_bundle
        self._timeout = http_timeout
        self._lock = threading.Lock()
        self._app: msal.ClientApplication | None = None
        self._cache: msal.SerializableTokenCache | None = None
        self._force = False

    def invalidate(self) -> None:
        """The last access token was refused: the next call gets a fresh one."""
        with self._lock:
            self._force = True

    def __call__(self) -> str:
        with self._lock:
            try:
                app, cache = self._application()
                account = next(
                    (a for a in app.get_accounts() if a.get("home_account_id") == self._home), None
                )
                if account is None:
                    raise NeedsReauth(
                        "the token cache holds no signed-in account for this mailbox; reconnect it"
                    )
                result = app.acquire_token_silent_with_error(
                    self._scopes, account, force_refresh=self._force
                )
            except requests.RequestException as error:
                raise TokenUnavailable(
                    f"the Microsoft token endpoint is unreachable ({type(error).__name__})"
                ) from None
            except ValueError as error:
                raise ProviderError(f"the Microsoft sign-in is misconfigured: {error}") from None
            self._persist(cache)
            if result is None:
                raise NeedsReauth(
                    "no refresh token for this mailbox in the token cache; reconnect it"
                )
            if "access_token" in result:
                self._force = False
                return str(result["access_token"])
            if result.get("error") in REAUTH_ERRORS:
                raise NeedsReauth(
                    f"Microsoft refused the refresh ({describe(result)}); reconnect the mailbox"
                )
            raise TokenUnavailable(f"token refresh failed ({describe(result)})")

    def _application(self) -> tuple[msal.ClientApplication, msal.SerializableTokenCache]:
        if self._app is None or self._cache is None:
            cache = msal.SerializableTokenCache()
            cache.deserialize(self._load())
            self._app = build_app(
                self._client_id,
                authority=self._authority,
                client_secret=self._secret,
                token_cache=cache,
                ca_bundle=self._ca_bundle,
                http_timeout=self._timeout,
            )
            self._cache = cache
        return self._app, self._cache

    def _persist(self, cache: msal.SerializableTokenCache) -> None:
        if cache.has_state_changed:
            self._save(cache.serialize())
            cache.has_state_changed = False
