"""The MSAL side of Microsoft sign-in: the application for a configuration (authority from
configuration, instance discovery only for Microsoft's login hosts, the CA bundle honoured) and
`MicrosoftTokenSource`, the access tokens of a connected account from its token cache."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

from maillink.http_policy import parse_retry_after
from maillink.providers.base import NeedsReauth, ProviderError
from maillink.providers.graph_api import CABundleSession, TokenUnavailable, shared_session

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

THROTTLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_token_status = threading.local()  # this thread's last token answer status (`status`)


class _BusyAnswerLog(logging.Filter):
    """MSAL logs a token answer that is not JSON as an ERROR with a traceback (its oauth2
    client). A busy endpoint's bare 429/503 is no such error: the one retry policy waits it out
    and logs its own line. So that answer becomes one warning line; any other answer that is
    not JSON stays MSAL's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(_token_status, "status", None)
        if (
            status in THROTTLE_STATUSES
            and record.levelno >= logging.ERROR
            and str(record.msg).startswith("Token response is not in json format")
        ):
            record.msg = "the Microsoft token endpoint answered %s without a JSON body (busy)"
            record.args = (status,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("msal.oauth2cli.oauth2").addFilter(_BusyAnswerLog())


class _CallerCache:
    """The token cache MSAL works on: the one of the mailbox whose token the calling thread is
    getting (`bound`). One MSAL application then serves every mailbox of a configuration, and
    keeps no mailbox's tokens once its call is over."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def bound(self, cache: msal.SerializableTokenCache) -> Iterator[None]:
        self._local.cache = cache
        try:
            yield
        finally:
            self._local.cache = None

    def _cache(self) -> msal.TokenCache:
        cache: msal.TokenCache | None = getattr(self._local, "cache", None)
        if cache is None:
            raise RuntimeError("MSAL used the shared application outside a mailbox's call")
        return cache

    # MSAL takes these two as bound methods when it builds its client: looked up per call here.
    def remove_rt(self, *args: Any, **kwargs: Any) -> Any:
        return self._cache().remove_rt(*args, **kwargs)

    def update_rt(self, *args: Any, **kwargs: Any) -> Any:
        return self._cache().update_rt(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache(), name)


class _Forgetful(MutableMapping[Any, Any]):
    """MSAL's `http_cache` that keeps nothing: MSAL then never answers a token request with a
    throttled answer it kept (its own per-account throttling), so the one HTTP policy alone
    decides when to ask again. (The authority is discovered once, when the shared application
    is built.)"""

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        return None

    def __delitem__(self, key: Any) -> None:
        return None

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0


class SharedApplication:
    """One MSAL application per configuration (client, authority, secret, CA bundle, timeout),
    shared by every mailbox's `MicrosoftTokenSource` in the process, on the process's one
    connection pool; each call works on the calling mailbox's own token cache. The token
    endpoint's last answer status and Retry-After (`answer`) let a refusal be classified by the
    one HTTP policy (429/503 waited out, other mailboxes untouched)."""

    def __init__(
        self,
        client_id: str,
        *,
        authority: str,
        client_secret: str | None,
        ca_bundle: str | None,
        http_timeout: float,
    ) -> None:
        self.caches = _CallerCache()
        self._answers = threading.local()
        check_authority(authority)
        options: dict[str, Any] = {
            "authority": authority,
            "instance_discovery": uses_instance_discovery(authority),
            "http_client": shared_session(ca_bundle, http_timeout),
            "token_cache": self.caches,
            "http_cache": _Forgetful(),
        }
        self.app: msal.ClientApplication
        if client_secret:
            self.app = msal.ConfidentialClientApplication(
                client_id, client_credential=client_secret, **options
            )
        else:
            self.app = msal.PublicClientApplication(client_id, **options)
        self._watch_answers()

    def _watch_answers(self) -> None:
        """Every token POST's answer (MSAL's own replays of a throttled one too) noted per thread."""
        client = getattr(self.app, "http_client", None)
        post = getattr(client, "post", None)
        if client is None or post is None:
            return

        def noted(*args: Any, **kwargs: Any) -> Any:
            response = post(*args, **kwargs)
            headers = getattr(response, "headers", None) or {}
            retry_after = next(
                (str(v) for k, v in headers.items() if str(k).lower() == "retry-after"), None
            )
            self._answers.last = (int(response.status_code), retry_after)
            _token_status.status = int(response.status_code)
            return response

        client.post = noted

    def answer(self) -> tuple[int, float | None] | None:
        """The status and Retry-After (seconds) of this thread's last token answer, if any."""
        last = getattr(self._answers, "last", None)
        if last is None:
            return None
        return last[0], parse_retry_after(last[1])

    def acquire(
        self,
        cache: msal.SerializableTokenCache,
        home_account_id: str,
        scopes: Sequence[str],
        *,
        force: bool,
    ) -> dict[str, Any] | None:
        """MSAL's silent acquisition for one account of `cache` (refreshing when needed);
        NeedsReauth when the cache holds no such account."""
        self._answers.last = None
        _token_status.status = None
        with self.caches.bound(cache):
            account = next(
                (a for a in self.app.get_accounts() if a.get("home_account_id") == home_account_id),
                None,
            )
            if account is None:
                raise NeedsReauth(
                    "the token cache holds no signed-in account for this mailbox; reconnect it"
                )
            result: dict[str, Any] | None = self.app.acquire_token_silent_with_error(
                list(scopes), account, force_refresh=force
            )
            return result


_shared: dict[tuple[str, str, str | None, str | None, float], SharedApplication] = {}
_shared_lock = threading.Lock()


def shared_application(
    client_id: str,
    *,
    authority: str,
    client_secret: str | None = None,
    ca_bundle: str | None = None,
    http_timeout: float = 60.0,
) -> SharedApplication:
    """The process's MSAL application for this configuration, built at its first use."""
    key = (client_id, authority, client_secret, ca_bundle, http_timeout)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = SharedApplication(
                client_id,
                authority=authority,
                client_secret=client_secret,
                ca_bundle=ca_bundle,
                http_timeout=http_timeout,
            )
            _shared[key] = found
        return found


class MicrosoftTokenSource:
    """Access tokens for one connected account, from its MSAL token cache.

    `load()` gives the cache (decrypted by the caller), `save(text)` keeps it (the caller
    encrypts it) whenever MSAL changed it: a rotated refresh token is never lost. Use it as the
    `token_source` of a `GraphProvider`; `invalidate()` makes the next call refresh.

    Light: the MSAL application is the process's shared one (`shared_application`); the source
    holds only the account's cache, read at its first call. A token endpoint that is busy or
    failing (429, 5xx) is a `TokenUnavailable` with its status and Retry-After, which the
    caller's retry policy waits out like any other answer.
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
        self._scopes = tuple(scopes)
        self._ca_bundle = ca_bundle
        self._timeout = http_timeout
        self._lock = threading.Lock()
        self._cache: msal.SerializableTokenCache | None = None
        self._force = False

    def invalidate(self) -> None:
        """The last access token was refused: the next call gets a fresh one."""
        with self._lock:
            self._force = True

    def __call__(self) -> str:
        with self._lock:
            shared: SharedApplication | None = None
            try:
                shared = shared_application(
                    self._client_id,
                    authority=self._authority,
                    client_secret=self._secret,
                    ca_bundle=self._ca_bundle,
                    http_timeout=self._timeout,
                )
                cache = self._token_cache()
                result = shared.acquire(cache, self._home, self._scopes, force=self._force)
            except requests.RequestException as error:
                raise TokenUnavailable(
                    f"the Microsoft token endpoint is unreachable ({type(error).__name__})"
                ) from None
            except (ValueError, msal.exceptions.MsalServiceError) as error:
                # A busy endpoint's answer lands here: MSAL reads a bare 429/503 as JSON, and
                # raises for a 5xx with a body.
                busy = _busy(shared)
                if busy is not None:
                    raise busy from None
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
            busy = _busy(shared, describe(result))
            if busy is not None:
                raise busy
            raise TokenUnavailable(f"token refresh failed ({describe(result)})")

    def _token_cache(self) -> msal.SerializableTokenCache:
        if self._cache is None:
            cache = msal.SerializableTokenCache()
            cache.deserialize(self._load())
            self._cache = cache
        return self._cache

    def _persist(self, cache: msal.SerializableTokenCache) -> None:
        if cache.has_state_changed:
            self._save(cache.serialize())
            cache.has_state_changed = False


def _busy(shared: SharedApplication | None, detail: str = "") -> TokenUnavailable | None:
    """The token endpoint's refusal as a busy or failing server (429, 408, 5xx), if it was."""
    answer = shared.answer() if shared is not None else None
    if answer is None or answer[0] not in THROTTLE_STATUSES:
        return None
    status, retry_after = answer
    text = f"the Microsoft token endpoint answered {status}" + (f" ({detail})" if detail else "")
    return TokenUnavailable(text, status=status, retry_after=retry_after)
