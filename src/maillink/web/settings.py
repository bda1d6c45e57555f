"""Where the web app is served and the address browsers (and OAuth redirects) use to reach it.

`maillink serve --host --port --public-url` give these for now; maillink.toml has no `[web]`
table yet. The OAuth redirect URIs are built from `public_url` only, never from a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from maillink.config import check_endpoint
from maillink.errors import ConfigError

GOOGLE_CALLBACK = "/oauth/google/callback"
MICROSOFT_CALLBACK = "/oauth/microsoft/callback"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class WebSettings:
    public_url: str  # scheme://host[:port], no trailing slash, no path
    host: str = "127.0.0.1"
    port: int = 8080

    @classmethod
    def build(cls, host: str, port: int, public_url: str | None) -> WebSettings:
        """Checked settings; `public_url` defaults to http://HOST:PORT (loopback hosts only)."""
        given = public_url if public_url else f"http://{_netloc(host, port)}"
        what = "--public-url" if public_url else f"--host {host} (no --public-url given)"
        url = check_endpoint(given, what).rstrip("/")
        parts = urlsplit(url)
        if parts.path or parts.query or parts.fragment:
            raise ConfigError(
                f"{what}: the public URL must be scheme://host[:port] only (got {url!r}); "
                "maillink is served at the root of its host"
            )
        return cls(public_url=url, host=host, port=port)

    @property
    def secure(self) -> bool:
        """Served over https (behind a TLS proxy): session cookies are then Secure."""
        return self.public_url.startswith("https://")

    @property
    def hostname(self) -> str:
        return urlsplit(self.public_url).hostname or ""

    @property
    def google_redirect_uri(self) -> str:
        return self.public_url + GOOGLE_CALLBACK

    @property
    def microsoft_redirect_uri(self) -> str:
        """The one redirect URI to register for the Microsoft app (sign-in and admin consent)."""
        return self.public_url + MICROSOFT_CALLBACK

    def signin_link(self, token: str) -> str:
        return f"{self.public_url}/signin?token={token}"
