"""maillink.toml and credentials.json → typed, checked settings (docs/configuration.md).

Every problem is a `ConfigError` whose one-line message names the file and the key and says what
to fix. Unknown keys are refused (typos would otherwise be silently ignored). Every endpoint comes
from these files, so the same code runs against the real services, the sandbox or a test double;
plain http is accepted for loopback hosts only. Secrets never appear in messages or reprs.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from maillink.errors import ConfigError
from maillink.linking.facts import LinkingPolicy, MultipleOpenItems

T = TypeVar("T")

CONFIG_ENV = "MAILLINK_CONFIG"
STORE_URL_ENV = "MAILLINK_STORE_URL"
ENCRYPTION_KEY_ENV = "MAILLINK_ENCRYPTION_KEY"
DEFAULT_CONFIG = "maillink.toml"
DEFAULT_CREDENTIALS = "credentials.json"
PIPEDRIVE_TOKEN_URL = "https://oauth.pipedrive.com/oauth/token"
HUBSPOT_API_URL = "https://api.hubapi.com"
HUBSPOT_AUTH_URL = "https://app.hubspot.com/oauth/authorize"
HUBSPOT_TOKEN_URL = "https://api.hubapi.com/oauth/v3/token"
CRM_KINDS = ("pipedrive", "hubspot")
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
LOOPBACK_NAMES = frozenset({"localhost"})
QUOTA_MODELS = ("2025", "2026")  # Gmail's quota unit costs ([gmail] quota_model)
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"  # Google's OIDC signing keys
PUSH_TOPIC = re.compile(r"^projects/[^/\s]+/topics/[^/\s]+$")


@dataclass(frozen=True)
class CrmSettings:
    base_url: str
    kind: str = "pipedrive"
    # The local mirror of the CRM's persons and items (issue 11): kept while the CRM holds at most
    # this many persons, deals and leads together; 0 turns it off (every new address is searched).
    mirror_max_records: int = 20_000


@dataclass(frozen=True)
class GmailSettings:
    api_endpoint: str = "https://gmail.googleapis.com"
    # Pacing (docs/configuration.md): quota units a mailbox may spend a minute, under the unit costs of
    # Google's quota model ("2025": messages.get 5, threads.get 10; "2026": 20, 40).
    # 0 turns pacing off. The default keeps 10% of Google's 15,000 units/min per user spare.
    quota_units_per_minute: int = 13_500
    quota_model: str = "2025"
    # Push (issue 12): the Pub/Sub topic every mailbox's users.watch publishes to; None: polling.
    push_topic: str | None = None
    # Domain-wide delegation (issue 13): the admin the Directory listing impersonates, the domain
    # it lists (None: the whole Workspace customer) or an explicit list of members instead, and
    # the Admin SDK's base URL.
    domain_wide_admin: str | None = None
    domain: str | None = None
    members: tuple[str, ...] = ()
    directory_endpoint: str = "https://admin.googleapis.com"


@dataclass(frozen=True)
class MicrosoftSettings:
    authority: str = "https://login.microsoftonline.com/common"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    folders: tuple[str, ...] = ("inbox", "sentitems")
    # Pacing: Graph requests a mailbox may send in 10 minutes (Graph allows 10,000); 0: no pacing.
    requests_per_10_minutes: int = 9_000
    # Change notifications (issue 12): the daemon's public /push/graph URL; None: polling only.
    notification_url: str | None = None
    # Tenant-wide connection: the group (id or display name) whose members are connected;
    # None: every enabled user with a mailbox.
    members_group: str | None = None


@dataclass(frozen=True)
class LinkingSettings:
    internal_domains: tuple[str, ...] = ()  # lower-cased, IDN domains in punycode
    blocked: tuple[str, ...] = ()  # lower-cased shell-style patterns
    multiple_open_items: MultipleOpenItems = MultipleOpenItems.ASK
    create_persons: bool = False


@dataclass(frozen=True)
class SyncSettings:
    interval_seconds: int = 120
    page_size: int = 500
    jitter_seconds: int = 10  # spread of the next runs (`daemon.schedule.Schedule`)
    max_backoff_seconds: int = 3600  # the longest pause of a mailbox after failed rounds
    lease_seconds: int = 60  # a daemon's hold on a mailbox, renewed while it works
    workers: int = 0  # mailboxes synced at once by one daemon; 0: 1 on SQLite, 4 on PostgreSQL


@dataclass(frozen=True)
class DaemonSettings:
    """`maillink daemon`'s operations endpoint: /healthz, /metrics, webhooks, push wake-ups."""

    ops_enabled: bool = True
    ops_host: str = "127.0.0.1"
    ops_port: int = 8780  # 0: any free port (printed when the daemon starts)
    crm_poll_seconds: int = 300  # the fallback poll of CRM changes (webhooks come at once)
    # The daemon's public base URL: Pipedrive's webhooks post to {public_url}/webhooks/pipedrive.
    public_url: str | None = None


MAX_LINK_HOURS = 720


@dataclass(frozen=True)
class WebAppSettings:
    """`[web]`: the web app of `maillink serve` (issue 9)."""

    link_hours: int = 24  # how long a sign-in link of `maillink users add|link` is valid


@dataclass(frozen=True)
class CacheSettings:
    person_ttl_seconds: int = 3600
    items_ttl_seconds: int = 600


@dataclass(frozen=True)
class MicrosoftCredentials:
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    tenant: str | None = None


@dataclass(frozen=True)
class PipedriveCredentials:
    """Either an API token, or an OAuth app's client and refresh token."""

    api_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    token_url: str = PIPEDRIVE_TOKEN_URL

    @property
    def uses_oauth(self) -> bool:
        return self.api_token is None


@dataclass(frozen=True)
class HubSpotCredentials:
    """A HubSpot private app's access token, or a public app's OAuth client (its refresh token
    is kept encrypted in the store by `maillink crm connect hubspot`; its client secret also
    signs HubSpot's webhooks)."""

    access_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    auth_url: str = HUBSPOT_AUTH_URL
    token_url: str = HUBSPOT_TOKEN_URL


@dataclass(frozen=True)
class WebhookCredentials:
    """The HTTP basic auth Pipedrive sends with its webhooks (set when registering the webhook)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class GmailPushOidc:
    """How Pub/Sub's push requests prove who sent them: an OIDC token signed by Google for the
    push subscription's service account, for `audience` (None: the URL the request reached)."""

    service_account: str
    audience: str | None = None
    certs_url: str = GOOGLE_CERTS_URL


@dataclass(frozen=True)
class Credentials:
    """credentials.json, checked. `encryption_keys` may be empty: `TokenCipher` says so when needed."""

    google: dict[str, Any] | None = field(default=None, repr=False)
    microsoft: MicrosoftCredentials | None = None
    pipedrive: PipedriveCredentials | None = None
    hubspot: HubSpotCredentials | None = None
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    path: Path | None = field(default=None, compare=False)
    webhook: WebhookCredentials | None = None
    gmail_push_token: str | None = field(default=None, repr=False)
    gmail_push_oidc: GmailPushOidc | None = None
    # The service account's JSON key (domain-wide delegation), inline or from the file named.
    google_service_account: dict[str, Any] | None = field(default=None, repr=False)

    def google_client(self) -> dict[str, Any]:
        """The inner ``{"client_id", "client_secret", "auth_uri", "token_uri", …}`` of the client."""
        if self.google is None:
            where = self.path if self.path is not None else DEFAULT_CREDENTIALS
            raise ConfigError(
                f"{where}: google is missing: put the OAuth client file Google Cloud gives "
                '({"installed": {...}}) there (see credentials.example.json)'
            )
        inner: dict[str, Any] = self.google.get("installed") or self.google["web"]
        return inner


@dataclass(frozen=True)
class Settings:
    config_path: Path
    store_url: str = field(repr=False)  # may hold a database password
    crm: CrmSettings
    gmail: GmailSettings
    microsoft: MicrosoftSettings
    linking: LinkingSettings
    sync: SyncSettings
    cache: CacheSettings
    credentials_path: Path
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    web: WebAppSettings = field(default_factory=WebAppSettings)

    def credentials(self) -> Credentials:
        """Read and check credentials.json now (it is only needed by some commands)."""
        return load_credentials(self.credentials_path, env=self.env)


# ---------------------------------------------------------------------------------------------
# endpoints


def check_endpoint(url: object, key: str, *, https_only: bool = False) -> str:
    """Return `url` if it may be used as an endpoint, else raise a ConfigError naming `key`.

    `key` says where the URL comes from, e.g. ``maillink.toml: [crm] base_url``. https is always
    accepted; plain http only for loopback hosts (127.0.0.1, ::1, localhost), and never when
    `https_only` (the Microsoft authority: MSAL accepts https only).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{key} must be a URL such as https://host/…")
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 literal
        raise ConfigError(f"{key} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(f"{key} must be an https:// URL (it has {got})")
    host = parts.hostname
    if not host:
        raise ConfigError(f"{key} must be an https:// URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key} must not contain a user name or password")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{key} has an invalid port") from None
    if scheme == "http":
        if https_only:
            raise ConfigError(
                f"{key} must use https:// (plain http is not accepted here, even for a loopback host)"
            )
        if not _is_loopback(host):
            raise ConfigError(
                f"{key} uses plain http:// for {host}: use https:// "
                "(http is accepted only for loopback hosts: 127.0.0.1, ::1, localhost)"
            )
    return url


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# reading tables with checked types


def _kind(value: object, table: str) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return table
    if value is None:
        return "null"
    return "a date/time"


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_table(value: object) -> bool:
    return isinstance(value, dict)


def _is_texts(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) and x.strip() for x in value)


def _is_keys(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(x, str) for x in value)
    )


class _Table:
    """One TOML table or JSON object being read: takes keys, checks types, refuses leftovers."""

    def __init__(self, data: Mapping[str, Any], prefix: str, table: str) -> None:
        self._data = dict(data)
        self._prefix = prefix  # "maillink.toml: [sync] ", "credentials.json: pipedrive."
        self._table = table  # "a table" (TOML) or "an object" (JSON)
        self.seen: set[str] = set()

    def label(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def has(self, key: str) -> bool:
        return key in self._data

    def checked(self, key: str, expected: str, ok: Callable[[Any], bool], hint: str) -> Any:
        self.seen.add(key)
        value = self._data[key]
        if not ok(value):
            example = f" (e.g. {hint})" if hint else ""
            raise ConfigError(
                f"{self.label(key)} must be {expected}, not {_kind(value, self._table)}{example}"
            )
        return value

    def text(self, key: str, default: T, hint: str = "") -> str | T:
        if key not in self._data:
            self.seen.add(key)
            return default
        value: str = self.checked(key, "a string", _is_str, hint)
        return value.strip()

    def required_text(self, key: str, hint: str = "") -> str:
        value = self.text(key, None, hint)
        if not value:
            state = "is empty" if key in self._data else "is missing"
            example = f" (e.g. {hint})" if hint else ""
            raise ConfigError(f"{self.label(key)} {state}{example}")
        return value

    def integer(
        self, key: str, default: int, minimum: int, hint: str = "", maximum: int | None = None
    ) -> int:
        if key not in self._data:
            self.seen.add(key)
            return default
        value: int = self.checked(key, "an integer", _is_int, hint)
        if value < minimum:
            raise ConfigError(f"{self.label(key)} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{self.label(key)} must be at most {maximum}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        if key not in self._data:
            self.seen.add(key)
            return default
        value: bool = self.checked(key, "true or false", _is_bool, "")
        return value

    def texts(self, key: str, default: tuple[str, ...], hint: str = "") -> tuple[str, ...]:
        if key not in self._data:
            self.seen.add(key)
            return default
        value: list[str] = self.checked(key, "a list of non-empty strings", _is_texts, hint)
        return tuple(x.strip() for x in value)

    def table(self, key: str) -> _Table | None:
        if key not in self._data:
            self.seen.add(key)
            return None
        value = self.checked(key, self._table, _is_table, "")
        return _Table(value, f"{self.label(key)}.", self._table)

    def finish(self) -> None:
        """Refuse any key that was not read (keys starting with "_" are comments in JSON)."""
        unknown = [k for k in self._data if k not in self.seen and not k.startswith("_")]
        if not unknown:
            return
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(self.seen), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(self.seen))}"
        raise ConfigError(f"{self.label(key)}: unknown key ({hint})")


# ---------------------------------------------------------------------------------------------
# maillink.toml

_SECTIONS = ("store", "crm", "gmail", "microsoft", "linking", "sync", "cache", "daemon", "web")


def load_settings(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] = os.environ
) -> Settings:
    """Read maillink.toml: `path`, else $MAILLINK_CONFIG, else ./maillink.toml."""
    origin = ""
    if path is None and env.get(CONFIG_ENV):
        path, origin = env[CONFIG_ENV], f" (named by {CONFIG_ENV})"
    given = Path(path if path is not None else DEFAULT_CONFIG).expanduser()
    config_path = Path(os.path.abspath(given))
    shown = str(given)
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {config_path}{origin}: copy maillink.example.toml there and set "
            "[crm] base_url, or name another file with --config PATH or MAILLINK_CONFIG"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{config_path}{origin} is a folder, not a maillink.toml file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path}{origin}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML: {exc}") from None
    return _parse_settings(data, config_path, shown, env)


def _parse_settings(
    data: Mapping[str, Any], config_path: Path, shown: str, env: Mapping[str, str]
) -> Settings:
    top = _Table(data, f"{shown}: ", "a table")
    sections: dict[str, _Table] = {}
    for name in _SECTIONS:
        table = top.checked(name, f"a table ([{name}])", _is_table, "") if top.has(name) else {}
        top.seen.add(name)
        sections[name] = _Table(table, f"{shown}: [{name}] ", "a table")
    folder = config_path.parent
    credentials = top.text("credentials", DEFAULT_CREDENTIALS, 'credentials = "credentials.json"')
    for key, value in data.items():
        if key not in _SECTIONS and isinstance(value, dict):
            close = difflib.get_close_matches(key, _SECTIONS, n=1)
            hint = f"did you mean [{close[0]}]?" if close else f"known: {', '.join(_SECTIONS)}"
            raise ConfigError(f"{shown}: unknown section [{key}] ({hint})")
    top.finish()

    settings = Settings(
        config_path=config_path,
        store_url=_store_url(sections["store"], folder, env),
        crm=_crm(sections["crm"]),
        gmail=_gmail(sections["gmail"]),
        microsoft=_microsoft(sections["microsoft"]),
        linking=_linking(sections["linking"]),
        sync=_sync(sections["sync"]),
        cache=_cache(sections["cache"]),
        credentials_path=_beside(folder, credentials),
        env=env,
        daemon=_daemon(sections["daemon"]),
        web=_web(sections["web"]),
    )
    return settings


def _beside(folder: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else Path(os.path.abspath(folder / path))


def _store_url(t: _Table, folder: Path, env: Mapping[str, str]) -> str:
    url = t.text("url", None, 'url = "sqlite:///maillink.db"')
    t.finish()
    if env.get(STORE_URL_ENV):
        # A path given in the environment is relative to where the command runs.
        return _checked_store_url(env[STORE_URL_ENV].strip(), STORE_URL_ENV, Path.cwd())
    if not url:
        return "sqlite:///" + (folder / "maillink.db").as_posix()
    return _checked_store_url(url, t.label("url"), folder)


_SQLITE_FILE = re.compile(r"^(?P<scheme>sqlite(?:\+\w+)?):///(?P<path>[^?]*)(?P<query>\?.*)?$")


def _checked_store_url(url: str, key: str, folder: Path) -> str:
    """Check the database URL's scheme and make a relative SQLite path absolute (from `folder`)."""
    scheme, sep, _ = url.partition("://")
    dialect = scheme.partition("+")[0].lower()
    if not sep or dialect not in ("sqlite", "postgresql", "postgres"):
        got = f"scheme {scheme!r}" if sep else "no scheme"
        raise ConfigError(
            f"{key} must be sqlite:///PATH or postgresql://user@host/db (it has {got})"
        )
    match = _SQLITE_FILE.match(url)
    if not match:
        return url  # PostgreSQL, or "sqlite://" (in memory)
    path = match["path"]
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    resolved = _beside(folder, path).as_posix()
    return f"{match['scheme']}:///{resolved}{match['query'] or ''}"


def _crm(t: _Table) -> CrmSettings:
    kind = t.text("kind", "pipedrive", 'kind = "pipedrive"').lower()
    if kind not in CRM_KINDS:
        raise ConfigError(f'{t.label("kind")} must be "pipedrive" or "hubspot"')
    if kind == "hubspot":
        base_url = t.text("base_url", HUBSPOT_API_URL, f'base_url = "{HUBSPOT_API_URL}"')
    else:
        base_url = t.required_text("base_url", 'base_url = "https://yourcompany.pipedrive.com"')
    mirror = t.integer(
        "mirror_max_records",
        CrmSettings.mirror_max_records,
        0,
        "mirror_max_records = 20000",
    )
    t.finish()
    return CrmSettings(
        kind=kind,
        base_url=check_endpoint(base_url, t.label("base_url")).rstrip("/"),
        mirror_max_records=mirror,
    )


def _url(t: _Table, key: str, default: str, *, https_only: bool = False) -> str:
    url = t.text(key, default, f'{key} = "{default}"')
    return check_endpoint(url, t.label(key), https_only=https_only).rstrip("/")


def _gmail(t: _Table) -> GmailSettings:
    defaults = GmailSettings()
    model = t.text("quota_model", defaults.quota_model, 'quota_model = "2025"')
    if model not in QUOTA_MODELS:
        raise ConfigError(
            f'{t.label("quota_model")} must be "2025" or "2026" (Google\'s quota unit costs)'
        )
    settings = GmailSettings(
        api_endpoint=_url(t, "api_endpoint", GmailSettings.api_endpoint),
        quota_units_per_minute=t.integer(
            "quota_units_per_minute",
            defaults.quota_units_per_minute,
            0,
            "quota_units_per_minute = 13500",
        ),
        quota_model=model,
        push_topic=_push_topic(t),
        **_domain_wide(t),
    )
    t.finish()
    return settings


def _domain_wide(t: _Table) -> dict[str, Any]:
    """The [gmail] keys of the domain-wide connection (docs/configuration.md)."""
    admin = t.text("domain_wide_admin", None, 'domain_wide_admin = "admin@yourcompany.com"')
    if admin and "@" not in admin:
        raise ConfigError(
            f"{t.label('domain_wide_admin')} must be a Workspace admin's email address "
            '(e.g. domain_wide_admin = "admin@yourcompany.com")'
        )
    domain = t.text("domain", None, 'domain = "yourcompany.com"')
    if domain and ("@" in domain or "." not in domain):
        raise ConfigError(f'{t.label("domain")} must be a domain name (e.g. "yourcompany.com")')
    members = t.texts("members", (), 'members = ["rep@yourcompany.com"]')
    wrong = [m for m in members if "@" not in m]
    if wrong:
        raise ConfigError(f"{t.label('members')}: {wrong[0]!r} is not an email address")
    return {
        "domain_wide_admin": admin.lower() if admin else None,
        "domain": domain.lower() if domain else None,
        "members": tuple(dict.fromkeys(m.lower() for m in members)),
        "directory_endpoint": _url(t, "directory_endpoint", GmailSettings.directory_endpoint),
    }


def _push_topic(t: _Table) -> str | None:
    example = 'push_topic = "projects/YOUR-PROJECT/topics/gmail-push"'
    topic = t.text("push_topic", None, example)
    if topic is None:
        return None
    if not PUSH_TOPIC.match(topic):
        raise ConfigError(
            f"{t.label('push_topic')} must be a Pub/Sub topic name "
            f"projects/PROJECT/topics/TOPIC (e.g. {example})"
        )
    return topic


def _microsoft(t: _Table) -> MicrosoftSettings:
    defaults = MicrosoftSettings()
    folders = t.texts("folders", defaults.folders, 'folders = ["inbox", "sentitems"]')
    if not folders:
        raise ConfigError(f'{t.label("folders")} is empty (e.g. folders = ["inbox", "sentitems"])')
    settings = MicrosoftSettings(
        authority=_url(t, "authority", defaults.authority, https_only=True),
        graph_url=_url(t, "graph_url", defaults.graph_url),
        folders=folders,
        requests_per_10_minutes=t.integer(
            "requests_per_10_minutes",
            defaults.requests_per_10_minutes,
            0,
            "requests_per_10_minutes = 9000",
        ),
        notification_url=_notification_url(t),
        members_group=t.text("members_group", None, 'members_group = "Sales"') or None,
    )
    t.finish()
    return settings


def _notification_url(t: _Table) -> str | None:
    example = 'notification_url = "https://YOUR-HOST/push/graph"'
    url = t.text("notification_url", None, example)
    if not url:
        return None
    checked = check_endpoint(url, t.label("notification_url")).rstrip("/")
    if "?" in checked or "#" in checked:
        raise ConfigError(
            f"{t.label('notification_url')} may not carry a query or a fragment (e.g. {example})"
        )
    return checked


def _linking(t: _Table) -> LinkingSettings:
    d = LinkingSettings()
    domains = t.texts(
        "internal_domains", d.internal_domains, 'internal_domains = ["yourcompany.com"]'
    )
    blocked = t.texts("blocked", d.blocked, 'blocked = ["noreply@*"]')
    choices = "|".join(m.value for m in MultipleOpenItems)
    policy = t.text(
        "multiple_open_items", d.multiple_open_items.value, 'multiple_open_items = "ask"'
    ).lower()
    try:
        multiple = MultipleOpenItems(policy)
    except ValueError:
        raise ConfigError(
            f"{t.label('multiple_open_items')} must be one of {choices} (ask is Pipedrive's rule)"
        ) from None
    settings = LinkingSettings(
        internal_domains=tuple(_domain(d, t.label("internal_domains")) for d in domains),
        blocked=tuple(p.lower() for p in blocked),
        multiple_open_items=multiple,
        create_persons=t.flag("create_persons", d.create_persons),
    )
    t.finish()
    return settings


def _domain(text: str, key: str) -> str:
    domain = text.strip().lstrip("@").rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"{key}: {text!r} is not a domain name") from None


def _sync(t: _Table) -> SyncSettings:
    d = SyncSettings()
    settings = SyncSettings(
        interval_seconds=t.integer(
            "interval_seconds", d.interval_seconds, 1, "interval_seconds = 120"
        ),
        page_size=t.integer("page_size", d.page_size, 1, "page_size = 500", maximum=500),
        jitter_seconds=t.integer("jitter_seconds", d.jitter_seconds, 0, "jitter_seconds = 10"),
        max_backoff_seconds=t.integer(
            "max_backoff_seconds", d.max_backoff_seconds, 1, "max_backoff_seconds = 3600"
        ),
        lease_seconds=t.integer("lease_seconds", d.lease_seconds, 2, "lease_seconds = 60"),
        workers=t.integer("workers", d.workers, 0, "workers = 4"),
    )
    t.finish()
    return settings


def _daemon(t: _Table) -> DaemonSettings:
    d = DaemonSettings()
    host = t.text("ops_host", d.ops_host, 'ops_host = "127.0.0.1"')
    if not host:
        raise ConfigError(f'{t.label("ops_host")} is empty (e.g. ops_host = "127.0.0.1")')
    port = t.integer("ops_port", d.ops_port, 0, "ops_port = 8780")
    if port > 65535:
        raise ConfigError(f"{t.label('ops_port')} must be at most 65535 (0: any free port)")
    settings = DaemonSettings(
        ops_enabled=t.flag("ops_enabled", d.ops_enabled),
        ops_host=host,
        ops_port=port,
        crm_poll_seconds=t.integer(
            "crm_poll_seconds", d.crm_poll_seconds, 1, "crm_poll_seconds = 300"
        ),
        public_url=_public_url(t),
    )
    t.finish()
    return settings


def _public_url(t: _Table) -> str | None:
    """`[daemon] public_url`: where Pipedrive reaches the daemon (https; http for loopback)."""
    url = t.text("public_url", None, 'public_url = "https://maillink.example.com"')
    if url is None:
        return None
    url = check_endpoint(url, t.label("public_url")).rstrip("/")
    if urlsplit(url).query or urlsplit(url).fragment:
        raise ConfigError(f"{t.label('public_url')} must have no query or fragment")
    return url


def _web(t: _Table) -> WebAppSettings:
    hours = t.integer("link_hours", WebAppSettings().link_hours, 1, "link_hours = 24")
    if hours > MAX_LINK_HOURS:
        raise ConfigError(f"{t.label('link_hours')} must be at most {MAX_LINK_HOURS} (30 days)")
    settings = WebAppSettings(link_hours=hours)
    t.finish()
    return settings


def _cache(t: _Table) -> CacheSettings:
    d = CacheSettings()
    settings = CacheSettings(
        person_ttl_seconds=t.integer(
            "person_ttl_seconds", d.person_ttl_seconds, 0, "person_ttl_seconds = 3600"
        ),
        items_ttl_seconds=t.integer(
            "items_ttl_seconds", d.items_ttl_seconds, 0, "items_ttl_seconds = 600"
        ),
    )
    t.finish()
    return settings


def linking_policy(settings: Settings, own_addresses: Iterable[str]) -> LinkingPolicy:
    """The linking rules' policy: the configured [linking] plus every connected mailbox."""
    return LinkingPolicy(
        own_addresses=frozenset(a.strip().lower() for a in own_addresses if a.strip()),
        internal_domains=frozenset(settings.linking.internal_domains),
        blocked=settings.linking.blocked,
        multiple_open_items=settings.linking.multiple_open_items,
        create_persons=settings.linking.create_persons,
    )


# ---------------------------------------------------------------------------------------------
# credentials.json


def load_credentials(
    path: str | os.PathLike[str], *, env: Mapping[str, str] = os.environ
) -> Credentials:
    """Read and check credentials.json; the encryption key may also come from the environment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"no credentials file at {path}: copy credentials.example.json there and fill it in "
            '(or set credentials = "PATH" in maillink.toml)'
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {path}: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object with google, microsoft, pipedrive keys")
    top = _Table(data, f"{path}: ", "an object")
    google = top.table("google")
    microsoft = top.table("microsoft")
    pipedrive = top.table("pipedrive")
    hubspot = top.table("hubspot")
    webhook = top.table("webhook")
    gmail_push = top.table("gmail_push")
    service_account = _google_service_account(top, data, path)
    keys = _encryption_keys(top, env)
    top.finish()
    push_token, push_oidc = _gmail_push(gmail_push) if gmail_push else (None, None)
    return Credentials(
        google=_google(google, top.label("google"), data["google"]) if google else None,
        microsoft=_microsoft_credentials(microsoft) if microsoft else None,
        pipedrive=_pipedrive(pipedrive) if pipedrive else None,
        hubspot=_hubspot(hubspot) if hubspot else None,
        encryption_keys=keys,
        path=path,
        webhook=_webhook(webhook) if webhook else None,
        gmail_push_token=push_token,
        gmail_push_oidc=push_oidc,
        google_service_account=service_account,
    )


SERVICE_ACCOUNT_KEYS = ("client_email", "client_id", "private_key_id", "private_key")


def _google_service_account(
    top: _Table, data: Mapping[str, Any], path: Path
) -> dict[str, Any] | None:
    """The service account's JSON key file as Google Cloud gives it: inline
    (`google_service_account`) or read from `google_service_account_file` (beside this file).
    Checked for the fields the JWT bearer grant needs; never shown."""
    inline = top.table("google_service_account")
    named = top.text(
        "google_service_account_file", None, '"google_service_account_file": "sa-key.json"'
    )
    if inline is not None and named:
        raise ConfigError(
            f"{top.label('google_service_account')}: set google_service_account or "
            "google_service_account_file, not both"
        )
    if named:
        file = _beside(path.parent, named)
        where = f"{top.label('google_service_account_file')} ({file})"
        try:
            key = json.loads(file.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file (the service account's JSON key)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"{where}: cannot be read as a JSON key file") from None
        if not isinstance(key, dict):
            raise ConfigError(f"{where}: must be the JSON key file Google Cloud gives")
    elif inline is not None:
        where = top.label("google_service_account")
        key = dict(data["google_service_account"])
    else:
        return None
    if key.get("type") != "service_account":
        raise ConfigError(f'{where}: "type" must be "service_account" (a service account key)')
    for name in SERVICE_ACCOUNT_KEYS:
        if not isinstance(key.get(name), str) or not key[name].strip():
            raise ConfigError(f'{where}: "{name}" is missing (download a new JSON key)')
    key["token_uri"] = check_endpoint(
        key.get("token_uri") or GOOGLE_TOKEN_URI, f"{where} token_uri"
    )
    return key


def _webhook(t: _Table) -> WebhookCredentials:
    """The basic auth of the Pipedrive webhook endpoint; a short password is refused."""
    username = t.required_text("username", '"username": "maillink"')
    password = t.required_text("password", '"password": "a long random string"')
    t.finish()
    if len(password) < 16:
        raise ConfigError(f"{t.label('password')} must be at least 16 characters")
    return WebhookCredentials(username=username, password=password)


def _gmail_push(t: _Table) -> tuple[str | None, GmailPushOidc | None]:
    """How Gmail's Pub/Sub pushes are authenticated: the OIDC token of the push subscription's
    service account, and/or the shared token its URL carries (?token=…)."""
    token = t.text("token", None, '"token": "a long random string"') or None
    account = t.text("service_account", None, '"service_account": "push@PROJECT.iam…"') or None
    audience = t.text("audience", None, '"audience": "https://YOUR-HOST/push/gmail"') or None
    certs = t.text("certs_url", GOOGLE_CERTS_URL)
    certs_url = check_endpoint(certs, t.label("certs_url")).rstrip("/")
    t.finish()
    if token is None and account is None:
        raise ConfigError(
            f"{t.label('service_account')} is missing: set service_account (the push "
            "subscription's OIDC service account), token (a shared secret in the URL), or both"
        )
    if token is not None and len(token) < 16:
        raise ConfigError(f"{t.label('token')} must be at least 16 characters")
    if account is not None and "@" not in account:
        raise ConfigError(
            f"{t.label('service_account')} must be the service account's email address "
            "(e.g. push@PROJECT.iam.gserviceaccount.com)"
        )
    if account is None:
        return token, None
    oidc = GmailPushOidc(service_account=account.lower(), audience=audience, certs_url=certs_url)
    return token, oidc


def _encryption_keys(top: _Table, env: Mapping[str, str]) -> tuple[str, ...]:
    value: Any = None
    if top.has("encryption_key"):
        value = top.checked("encryption_key", "a string or a list of strings", _is_keys, "")
    else:
        top.seen.add("encryption_key")
    items = [value] if isinstance(value, str) else list(value or [])
    keys = tuple(k.strip() for item in items for k in item.split(",") if k.strip())
    if keys:
        return keys
    return tuple(k.strip() for k in env.get(ENCRYPTION_KEY_ENV, "").split(",") if k.strip())


def _google(t: _Table, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    kinds = [k for k in ("installed", "web") if t.has(k)]
    if len(kinds) != 1:
        state = "has both" if kinds else "needs one of"
        raise ConfigError(
            f"{where} {state} installed or web "
            "(the OAuth client file Google Cloud gives, see credentials.example.json)"
        )
    kind = kinds[0]
    client = t.table(kind)
    assert client is not None
    client.required_text("client_id", '"client_id": "….apps.googleusercontent.com"')
    client.text("client_secret", None)
    for key, example in (("auth_uri", GOOGLE_AUTH_URI), ("token_uri", GOOGLE_TOKEN_URI)):
        check_endpoint(client.required_text(key, f'"{key}": "{example}"'), client.label(key))
    client.texts("redirect_uris", ())
    # The rest of Google's file (project_id, auth_provider_x509_cert_url…) is kept as it is.
    google: dict[str, Any] = {kind: dict(raw[kind])}
    return google


def _microsoft_credentials(t: _Table) -> MicrosoftCredentials:
    credentials = MicrosoftCredentials(
        client_id=t.required_text(
            "client_id", '"client_id": "00000000-0000-0000-0000-000000000000"'
        ),
        client_secret=t.text("client_secret", None) or None,
        tenant=t.text("tenant", None) or None,
    )
    t.finish()
    return credentials


def _hubspot(t: _Table) -> HubSpotCredentials:
    access_token = t.text("access_token", None) or None
    client_id = t.text("client_id", None) or None
    client_secret = t.text("client_secret", None) or None
    auth_url = check_endpoint(t.text("auth_url", HUBSPOT_AUTH_URL), t.label("auth_url"))
    token_url = check_endpoint(t.text("token_url", HUBSPOT_TOKEN_URL), t.label("token_url"))
    t.finish()
    if not access_token and not (client_id or client_secret):
        raise ConfigError(
            f"{t.label('access_token')} is missing: set the access token of a HubSpot private app "
            "(Settings > Integrations > Private apps), or client_id and client_secret of a "
            "public app (then run: maillink crm connect hubspot)"
        )
    if client_id and not client_secret or client_secret and not client_id:
        missing = "client_secret" if client_id else "client_id"
        raise ConfigError(
            f"{t.label(missing)} is missing (client_id and client_secret of a HubSpot public "
            "app go together)"
        )
    return HubSpotCredentials(
        access_token=access_token,
        client_id=client_id,
        client_secret=client_secret,
        auth_url=auth_url,
        token_url=token_url,
    )


def _pipedrive(t: _Table) -> PipedriveCredentials:
    api_token = t.text("api_token", None) or None
    oauth = {
        key: t.text(key, None) or None for key in ("client_id", "client_secret", "refresh_token")
    }
    token_url = check_endpoint(t.text("token_url", PIPEDRIVE_TOKEN_URL), t.label("token_url"))
    t.finish()
    given = [key for key, value in oauth.items() if value]
    if api_token and given:
        raise ConfigError(
            f"{t.label('api_token')}: set either api_token or the OAuth fields "
            "(client_id, client_secret, refresh_token), not both"
        )
    if not api_token:
        missing = [key for key, value in oauth.items() if not value]
        if len(missing) == len(oauth):
            raise ConfigError(
                f"{t.label('api_token')} is missing: set api_token, or client_id, client_secret "
                "and refresh_token of a Pipedrive OAuth app"
            )
        if missing:
            raise ConfigError(
                f"{t.label(missing[0])} is missing (the OAuth fields client_id, client_secret "
                "and refresh_token go together)"
            )
    return PipedriveCredentials(api_token=api_token, token_url=token_url, **oauth)
