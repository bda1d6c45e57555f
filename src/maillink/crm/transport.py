"""How bytes reach the CRM (Pipedrive, HubSpot): one small transport interface, over urllib3
(the default) or a requests session given by the caller.

urllib3 directly costs a fraction of what requests adds to every call (a backfill makes one call
per email), and it says exactly what the retry policy needs: whether a failed request can have
reached the CRM (`NeverSent`) or not (`NoAnswer`). The environment is honoured as requests
honours it: `REQUESTS_CA_BUNDLE` / `SSL_CERT_FILE` for extra CA certificates, and the usual
`HTTPS_PROXY` / `NO_PROXY` variables.
"""

from __future__ import annotations

import json as jsonlib
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError


class NeverSent(Exception):
    """No connection was made: the CRM cannot have received the request."""


class NoAnswer(Exception):
    """The request may have reached the CRM, but no answer came (reset, read timeout)."""


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes
    reason: str = ""

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON."""
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class Transport(Protocol):
    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Answer: ...


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    pairs = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()]
    return "?" + urlencode([(k, v) for k, v in pairs if v is not None], doseq=True)


def _ca_bundle() -> str | None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests brings it
        return None
    return certifi.where()


class Urllib3Transport:
    """Pooled keep-alive connections, no retries of its own (the policy retries)."""

    def __init__(self, pool_size: int = 10) -> None:
        self._options: dict[str, Any] = {"maxsize": pool_size, "ca_certs": _ca_bundle()}
        self._direct = urllib3.PoolManager(**self._options)
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        # The manager of each (scheme, host): the proxy settings (environment, and the
        # system's where Python reads them) are read once per host, not at every request
        # (about 0.3 ms each).
        self._routes: dict[tuple[str, str], urllib3.PoolManager] = {}

    def _manager(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        route = (parts.scheme, parts.hostname or "")
        manager = self._routes.get(route)
        if manager is None:
            manager = self._routes[route] = self._route(*route)
        return manager

    def _route(self, scheme: str, host: str) -> urllib3.PoolManager:
        proxy = urllib.request.getproxies().get(scheme)
        if not proxy or urllib.request.proxy_bypass(host):
            return self._direct
        if proxy not in self._proxied:
            self._proxied[proxy] = urllib3.ProxyManager(proxy, **self._options)
        return self._proxied[proxy]

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Answer:
        sent = dict(headers)
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            sent["Content-Type"] = "application/json"
        target = url + _query(params)
        try:
            response = self._manager(target).request(
                method,
                target,
                body=body,
                headers=sent,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,
                redirect=False,
            )
        except (NewConnectionError, ConnectTimeoutError) as exc:
            raise NeverSent(str(exc)) from exc
        except HTTPError as exc:  # reset, read timeout, TLS trouble after connecting
            raise NoAnswer(str(exc)) from exc
        return Answer(response.status, response.headers, response.data, response.reason or "")


class RequestsTransport:
    """The same interface over a `requests.Session` the caller brings."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Answer:
        import requests

        try:
            response = self.session.request(
                method, url, params=params, json=json, headers=headers, timeout=timeout
            )
        except requests.ConnectTimeout as exc:
            raise NeverSent(str(exc)) from exc
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            if isinstance(reason, NewConnectionError | ConnectTimeoutError):
                raise NeverSent(str(exc)) from exc
            raise NoAnswer(str(exc)) from exc
        except requests.Timeout as exc:
            raise NoAnswer(str(exc)) from exc
        return Answer(
            response.status_code, response.headers, response.content, response.reason or ""
        )
