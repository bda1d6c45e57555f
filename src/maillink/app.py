"""The composition root: settings → store, cipher, CRM, providers, linker, outbox, syncer.

Commands (CLI, daemon, web) ask the `App` for what they need; nothing is built before it is used,
so `maillink accounts` works without CRM credentials and `maillink demo` without any files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy.exc import OperationalError

from maillink.config import Credentials, MicrosoftCredentials, Settings, linking_policy
from maillink.crm.base import CRM
from maillink.crm.owners import Mailbox
from maillink.errors import ConfigError
from maillink.linking.facts import LinkingPolicy
from maillink.linking.linker import CacheTTL, FactGatherer, Linker, connected_mailboxes
from maillink.outbox import Outbox
from maillink.providers.base import MailProvider
from maillink.providers.pacing import Pacer, Pacers
from maillink.providers.retry import RetryPolicy
from maillink.secrets import TokenCipher
from maillink.store import Store, accounts
from maillink.store.accounts import Account
from maillink.sync import Syncer

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from maillink.crm.hubspot_oauth import Grant as HubSpotGrant
    from maillink.crm.hubspot_oauth import OAuthApp as HubSpotOAuthApp
    from maillink.crm.hubspot_oauth import OAuthTokens as HubSpotTokens
    from maillink.crm.hubspot_webhooks import HubSpotWebhooks
    from maillink.onboarding.microsoft import ConnectedMicrosoftAccount, MicrosoftTokenSource
    from maillink.onboarding.microsoft_tenant import AppTokenSource
    from maillink.providers.google_token import GoogleCredentials

GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"


def _naive_utc(value: Any) -> datetime | None:
    """A stored access token's expiry, as google-auth compares it (naive UTC); None if unusable."""
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=None) if value else None
    except ValueError:
        return None


def _graph_root(account: Account) -> str:
    """The mailbox on Graph: /me for a rep's own consent, /users/{id} for the app's token."""
    if account.connected_via != "tenant":
        return "/me"
    return f"/users/{quote(account.directory_id or account.email, safe='@')}"


class App:
    def __init__(self, settings: Settings, *, crm: CRM | None = None):
        self.settings = settings
        self._unsaved_tokens: dict[int, str] = {}
        # (accounts version, policy, the mailboxes): rebuilt when the mailboxes change
        self._policy: tuple[str | None, LinkingPolicy, tuple[Mailbox, ...]] | None = None
        self.policy_builds = 0  # how many times the policy was built from every mailbox
        if crm is not None:
            self.__dict__["crm"] = crm

    @cached_property
    def store(self) -> Store:
        return Store.open(self.settings.store_url)

    @cached_property
    def credentials(self) -> Credentials:
        return self.settings.credentials()

    @cached_property
    def cipher(self) -> TokenCipher:
        return TokenCipher(self.credentials.encryption_keys)

    @cached_property
    def crm(self) -> CRM:
        from maillink.crm.pipedrive import PipedriveCRM

        if self.settings.crm.kind == "hubspot":
            return self._hubspot()
        pipedrive = self.credentials.pipedrive
        where = self.settings.credentials_path
        if pipedrive is None:
            raise ConfigError(f'{where}: pipedrive is missing: add {{"api_token": "…"}}')
        if pipedrive.api_token is None:
            raise ConfigError(
                f"{where}: pipedrive: OAuth app credentials are not supported yet; "
                "set pipedrive.api_token (Pipedrive → Personal preferences → API)"
            )
        adapter = PipedriveCRM(self.settings.crm.base_url, api_token=pipedrive.api_token)
        if self.settings.crm.mirror_max_records <= 0:
            return adapter
        from maillink.crm.mirror import MirroredCRM
        from maillink.store.mirror import MirrorTables

        # Refreshed by the daemon's CRM poll; a read refreshes it when two polls were missed.
        poll = timedelta(seconds=self.settings.daemon.crm_poll_seconds)
        return MirroredCRM(
            adapter,
            MirrorTables(self.store),
            max_records=self.settings.crm.mirror_max_records,
            max_age=max(2 * poll, timedelta(minutes=1)),
        )

    def _hubspot(self) -> CRM:
        """The HubSpot adapter (`[crm] kind = "hubspot"`); no local mirror yet."""
        from maillink.crm.hubspot import HubSpotCRM

        hubspot = self.credentials.hubspot
        if hubspot is None:
            where = self.settings.credentials_path
            raise ConfigError(f'{where}: hubspot is missing: add {{"access_token": "…"}}')
        base_url = self.settings.crm.base_url
        if hubspot.access_token:
            return HubSpotCRM(base_url, access_token=hubspot.access_token, check_key_property=True)
        return HubSpotCRM(base_url, tokens=self.hubspot_tokens(), check_key_property=True)

    def hubspot_tokens(self) -> HubSpotTokens:
        """The access tokens of the grant `maillink crm connect hubspot` stored (encrypted in
        the store's crm_state); `CRMAuthError` when there is none or no key reads it."""
        from maillink.crm.base import CRMAuthError
        from maillink.crm.hubspot_oauth import RECONNECT, STATE_NAME, Grant, OAuthTokens
        from maillink.errors import WrongKeyError
        from maillink.store import cache

        oauth_app = self.hubspot_app()
        with self.store.engine.connect() as conn:
            stored = cache.get_state(conn, STATE_NAME)
        if stored is None:
            raise CRMAuthError(f"HubSpot is not connected yet; {RECONNECT}")
        try:
            grant = Grant.loads(self.cipher.decrypt(stored))
        except WrongKeyError:
            raise CRMAuthError(
                f"the stored HubSpot grant cannot be decrypted; {RECONNECT}"
            ) from None
        return OAuthTokens(oauth_app, grant.refresh_token)

    def hubspot_webhooks(self) -> HubSpotWebhooks | None:
        """What the daemon's `POST /webhooks/hubspot` needs: the public app's client secret
        (which signs HubSpot's webhooks) and the adapter to read a deal's contacts; None when
        the CRM is not HubSpot or no public app is configured (changes are then polled)."""
        from maillink.crm.base import CRMError
        from maillink.crm.hubspot import HubSpotCRM
        from maillink.crm.hubspot_webhooks import HubSpotWebhooks, persons_of

        hubspot = self.credentials.hubspot
        if self.settings.crm.kind != "hubspot" or hubspot is None or not hubspot.client_secret:
            return None
        try:
            crm = self.crm
        except CRMError:
            crm = None
        return HubSpotWebhooks(
            hubspot.client_secret,
            public_url=self.settings.daemon.public_url,
            persons_of=persons_of(crm) if isinstance(crm, HubSpotCRM) else None,
        )

    def save_hubspot_grant(self, grant: HubSpotGrant) -> None:
        """Keep the grant of a HubSpot consent, encrypted; it replaces the one before."""
        from maillink.crm.hubspot_oauth import STATE_NAME
        from maillink.store import cache

        with self.store.transaction() as conn:
            cache.set_state(conn, STATE_NAME, self.cipher.encrypt(grant.dumps()))

    def hubspot_app(self) -> HubSpotOAuthApp:
        """The HubSpot public app of credentials.json `hubspot` (client_id, client_secret)."""
        from maillink.crm.hubspot_oauth import OAuthApp

        hubspot = self.credentials.hubspot
        if hubspot is None or not hubspot.client_id or not hubspot.client_secret:
            where = self.settings.credentials_path
            raise ConfigError(
                f"{where}: hubspot has no public app: add client_id and client_secret "
                "(HubSpot app > Auth)"
            )
        return OAuthApp(
            hubspot.client_id, hubspot.client_secret, hubspot.auth_url, hubspot.token_url
        )

    # -- linking -------------------------------------------------------------------------------
    def policy(self) -> LinkingPolicy:
        """The linking policy: the configured [linking] plus every connected mailbox's addresses.

        Kept between calls (with the mailboxes, whose reps own the emails) and rebuilt only when
        the mailboxes changed (`accounts.version`, one indexed read), so a round never reads
        every mailbox of the store."""
        with self.store.engine.connect() as conn:
            marker = accounts.version(conn)
            kept = self._policy
            if kept is not None and kept[0] == marker:
                return kept[1]
            mailboxes = connected_mailboxes(conn)
        own = [m.email for m in mailboxes] + [alias for m in mailboxes for alias in m.aliases]
        policy = linking_policy(self.settings, own)
        self._policy = (marker, policy, mailboxes)
        self.policy_builds += 1
        return policy

    def _kept_policy(self) -> LinkingPolicy:
        """The policy as last built (built now the first time), without looking for changes."""
        kept = self._policy
        return kept[1] if kept is not None else self.policy()

    def _kept_mailboxes(self) -> tuple[Mailbox, ...]:
        """The mailboxes as last read with the policy (which a round refreshes as it links)."""
        if self._policy is None:
            self.policy()
        assert self._policy is not None
        return self._policy[2]

    @cached_property
    def facts(self) -> FactGatherer:
        ttl = CacheTTL(
            persons=timedelta(seconds=self.settings.cache.person_ttl_seconds),
            items=timedelta(seconds=self.settings.cache.items_ttl_seconds),
        )
        return FactGatherer(self.store, self.crm, ttl)

    def linker(self) -> Linker:
        return Linker(self.store, self.facts, self.policy(), self._kept_mailboxes)

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.store, self.crm, redecide=lambda ids: self.linker().redecide(ids))

    def syncer(self, store: Store | None = None, *, record_sync: bool = True) -> Syncer:
        """The syncer, its linker and outbox writing through `store` (the App's by default).

        A mailbox round takes the mailbox's lease and passes its fenced store
        (`maillink.daemon.rounds.Rounds.hold`); the App's own store is for dry runs and tests.
        Without `record_sync`, the syncer leaves `last_sync_at`/`last_error` to its caller (a
        round records them as it releases the lease)."""
        store = self.store if store is None else store
        linker = Linker(store, self.facts, self._kept_policy(), self._kept_mailboxes)

        def current() -> Linker:
            # Looked at only when the round links something: an idle round reads no mailbox.
            linker.policy = self.policy()
            return linker

        outbox = Outbox(store, self.crm, redecide=lambda ids: current().redecide(ids))
        return Syncer(store, linker, outbox, refresh=current, record_sync=record_sync)

    # -- mailboxes -----------------------------------------------------------------------------
    def account(self, email: str) -> Account:
        with self.store.engine.connect() as conn:
            found = accounts.get(conn, email)
        if found is None:
            raise ConfigError(f"no connected mailbox {email!r} (see: maillink accounts)")
        return found

    def tokens(self, account: Account) -> dict[str, Any]:
        if not account.token:
            raise ConfigError(f"{account.email} has no stored token: connect it again")
        data: dict[str, Any] = json.loads(self.cipher.decrypt(account.token))
        return data

    def provider_for(self, account: Account, *, policy: RetryPolicy | None = None) -> MailProvider:
        """The mailbox's adapter; `policy` replaces the default retry policy (the daemon's counts
        every API answer for its metrics)."""
        from maillink.onboarding.team import TEAM_CONNECTIONS, team_policy

        if account.connected_via in TEAM_CONNECTIONS:  # read with the app's own credentials
            policy = team_policy(policy)
        if account.provider == "microsoft":
            return self._graph_provider(account, policy)
        if account.provider != "gmail":
            raise ConfigError(f"{account.email}: unknown provider {account.provider!r}")
        from maillink.providers.gmail import GmailProvider

        credentials, on_token = self.gmail_credentials(account)
        return GmailProvider(
            account.email,
            credentials,
            api_endpoint=self.settings.gmail.api_endpoint,
            aliases=account.aliases,
            page_size=self.settings.sync.page_size,
            policy=policy,
            pacer=self.gmail_pacers.for_mailbox(account.email) if self.gmail_pacers else None,
            quota_model=self.settings.gmail.quota_model,
            prefetch=True,
            on_token=on_token,
        )

    def gmail_credentials(
        self, account: Account
    ) -> tuple[GoogleCredentials, Callable[[str, datetime], None] | None]:
        """A Gmail mailbox's google-auth credentials, and what keeps a refreshed access token
        (None: nothing to keep). A mailbox connected domain-wide is read as itself by the
        service account (JWT bearer grant, the mailbox as subject); another by its own refresh
        token, with the access token a previous round (of this process or another) kept: used
        until it is (nearly) spent, so a daemon's start refreshes nothing still valid."""
        if account.connected_via == "domain":
            from maillink.onboarding.google_domain import mailbox_credentials

            return mailbox_credentials(self, account.email), None
        from google.oauth2.credentials import Credentials

        client = self.credentials.google_client()
        tokens = self.tokens(account)
        google = Credentials(
            token=tokens.get("access_token"),
            expiry=_naive_utc(tokens.get("access_token_expiry")),
            refresh_token=tokens["refresh_token"],
            client_id=client["client_id"],
            client_secret=client.get("client_secret"),
            token_uri=client["token_uri"],
            scopes=tokens.get("scopes") or [GMAIL_SCOPE],
        )
        return google, lambda token, expiry: self.keep_access_token(account, tokens, token, expiry)

    def keep_access_token(
        self, account: Account, tokens: dict[str, Any], token: str, expiry: datetime
    ) -> None:
        """A refreshed Gmail access token kept (encrypted, beside the refresh token) for the next
        round of any process; left alone if the mailbox was reconnected meanwhile."""
        try:
            with self.store.transaction() as conn:
                current = accounts.get_by_id(conn, account.id)
                if current is None or not current.token:
                    return
                stored = json.loads(self.cipher.decrypt(current.token))
                if stored.get("refresh_token") != tokens["refresh_token"]:
                    return
                stored["access_token"] = token
                stored["access_token_expiry"] = expiry.isoformat()
                accounts.set_token(conn, account.id, self.cipher.encrypt(json.dumps(stored)))
        except OperationalError:  # a dry run holds SQLite's write lock: refreshed again next time
            return

    @cached_property
    def gmail_pacers(self) -> Pacers | None:
        """Each Gmail mailbox's quota pacer, kept across rounds; None when pacing is off."""
        per_minute = self.settings.gmail.quota_units_per_minute
        return Pacers(lambda: Pacer.per_minute(per_minute)) if per_minute else None

    def microsoft_token_source(self, account: Account) -> MicrosoftTokenSource | AppTokenSource:
        """The mailbox's Microsoft tokens, from its stored MSAL cache; a refresh token MSAL
        rotates is kept at once, encrypted (a round's provider and its Graph subscription calls
        share this). A mailbox connected tenant-wide uses the app's own token instead (client
        credentials, one for the process)."""
        from maillink.onboarding.microsoft import MicrosoftTokenSource

        if account.connected_via == "tenant":
            from maillink.onboarding.microsoft_tenant import tenant_token_source

            return tenant_token_source(self)

        tokens = self.tokens(account)
        client = self._microsoft_client()

        def save(cache: str) -> None:
            # MSAL rotated the refresh token: keep the new cache, encrypted, at once.
            tokens["token_cache"] = cache
            secret = self.cipher.encrypt(json.dumps(tokens))
            try:
                with self.store.transaction() as conn:
                    accounts.set_token(conn, account.id, secret)
            except OperationalError:  # a dry run holds SQLite's write lock: kept for next time
                self._unsaved_tokens[account.id] = secret

        return MicrosoftTokenSource(
            client.client_id,
            authority=self.settings.microsoft.authority,
            home_account_id=tokens["home_account_id"],
            load=lambda: str(tokens["token_cache"]),
            save=save,
            client_secret=client.client_secret,
        )

    def _graph_provider(self, account: Account, policy: RetryPolicy | None) -> MailProvider:
        from maillink.providers.graph import GraphProvider

        source = self.microsoft_token_source(account)
        return GraphProvider(
            account.email,
            source,
            graph_url=self.settings.microsoft.graph_url,
            folders=self.settings.microsoft.folders,
            aliases=account.aliases,
            policy=policy,
            pacer=self.graph_pacers.for_mailbox(account.email) if self.graph_pacers else None,
            root=_graph_root(account),
        )

    @cached_property
    def graph_pacers(self) -> Pacers | None:
        """Each Microsoft mailbox's request pacer (a minute's worth may go at once: Graph
        counts over 10 minutes); None when pacing is off."""
        per_10_minutes = self.settings.microsoft.requests_per_10_minutes
        if not per_10_minutes:
            return None
        rate = per_10_minutes / 600.0
        return Pacers(lambda: Pacer(rate, rate * 60))

    def _microsoft_client(self) -> MicrosoftCredentials:
        client = self.credentials.microsoft
        if client is None:
            raise ConfigError(
                f"{self.settings.credentials_path}: microsoft is missing: add "
                '{"client_id": "…"} (an app registration in Microsoft Entra ID)'
            )
        return client

    def connect_microsoft(
        self,
        *,
        open_browser: bool,
        device_code: bool = False,
        port: int = 0,
        out: Any = None,
        announce: Callable[[str], None] | None = None,
    ) -> Account:
        """OAuth onboarding of one Microsoft 365 mailbox (MSAL, PKCE); its token cache is stored
        encrypted."""
        from maillink.onboarding.microsoft import connect_microsoft

        client = self._microsoft_client()
        connected = connect_microsoft(
            client.client_id,
            authority=self.settings.microsoft.authority,
            graph_url=self.settings.microsoft.graph_url,
            client_secret=client.client_secret,
            open_browser=open_browser,
            device_code=device_code,
            port=port,
            announce=announce,
            **({"out": out} if out is not None else {}),
        )
        with self.store.transaction() as conn:
            return self.store_microsoft_account(conn, connected)

    def store_microsoft_account(
        self, conn: Connection, connected: ConnectedMicrosoftAccount
    ) -> Account:
        """A connected Microsoft mailbox stored (its MSAL token cache encrypted) in the caller's
        transaction: `maillink connect microsoft` and the web app store it this one way."""
        token = self.cipher.encrypt(
            json.dumps(
                {
                    "token_cache": connected.token_cache,
                    "home_account_id": connected.home_account_id,
                    "scopes": list(connected.scopes),
                }
            )
        )
        return accounts.upsert(
            conn, connected.email, "microsoft", token, " ".join(connected.scopes)
        )

    def save_unsaved_tokens(self) -> None:
        """Tokens rotated while a dry run held the store: written now."""
        with self.store.transaction() as conn:
            for account_id, secret in self._unsaved_tokens.items():
                accounts.set_token(conn, account_id, secret)
        self._unsaved_tokens.clear()

    def store_accounts(self, *, active_only: bool = True) -> list[Account]:
        with self.store.engine.connect() as conn:
            found = accounts.all_accounts(conn)
        return [a for a in found if a.status == accounts.ACTIVE or not active_only]

    def connect_gmail(
        self,
        *,
        open_browser: bool,
        port: int = 0,
        out: Any = None,
        announce: Callable[[str], None] | None = None,
    ) -> Account:
        """OAuth onboarding of one Gmail mailbox; its refresh token is stored encrypted."""
        from maillink.onboarding.google import connect_google

        connected = connect_google(
            self.credentials.google or {},
            api_endpoint=self.settings.gmail.api_endpoint,
            open_browser=open_browser,
            port=port,
            announce=announce,
            **({"out": out} if out is not None else {}),
        )
        token = self.cipher.encrypt(
            json.dumps({"refresh_token": connected.refresh_token, "scopes": list(connected.scopes)})
        )
        with self.store.transaction() as conn:
            return accounts.upsert(
                conn, connected.email, "gmail", token, " ".join(connected.scopes)
            )

    def check_keys(self) -> None:
        """Every stored token decrypts with the configured keys (else WrongKeyError, exit 2)."""
        for account in self.store_accounts(active_only=False):
            if account.token:
                self.cipher.decrypt(account.token)

    def rotate_keys(self) -> int:
        """Re-encrypt every stored token under the newest key; returns how many."""
        from maillink.crm.hubspot_oauth import STATE_NAME as HUBSPOT_GRANT
        from maillink.store import cache
        from maillink.web.session_key import rotate_session_key

        count = 0
        with self.store.transaction() as conn:
            for account in accounts.all_accounts(conn):
                if account.token:
                    accounts.set_token(conn, account.id, self.cipher.rotate(account.token))
                    count += 1
            rotate_session_key(conn, self.cipher)
            grant = cache.get_state(conn, HUBSPOT_GRANT)
            if grant is not None:
                cache.set_state(conn, HUBSPOT_GRANT, self.cipher.rotate(grant))
                count += 1
        return count

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
