"""The composition root: settings → store, cipher, CRM, providers, linker, outbox, syncer.

Commands (CLI, daemon, web) ask the `App` for what they need; nothing is built before it is used,
so `maillink accounts` works without CRM credentials and `maillink demo` without any files.
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import cached_property
from typing import Any

from maillink.config import Credentials, Settings, linking_policy
from maillink.crm.base import CRM
from maillink.errors import ConfigError
from maillink.linking.facts import LinkingPolicy
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.outbox import Outbox
from maillink.providers.base import MailProvider
from maillink.secrets import TokenCipher
from maillink.store import Store, accounts
from maillink.store.accounts import Account
from maillink.sync import Syncer

GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"


class App:
    def __init__(self, settings: Settings, *, crm: CRM | None = None):
        self.settings = settings
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

        pipedrive = self.credentials.pipedrive
        where = self.settings.credentials_path
        if pipedrive is None:
            raise ConfigError(f'{where}: pipedrive is missing: add {{"api_token": "…"}}')
        if pipedrive.api_token is None:
            raise ConfigError(
                f"{where}: pipedrive: OAuth app credentials are not supported yet; "
                "set pipedrive.api_token (Pipedrive → Personal preferences → API)"
            )
        return PipedriveCRM(self.settings.crm.base_url, api_token=pipedrive.api_token)

    # -- linking -------------------------------------------------------------------------------
    def policy(self) -> LinkingPolicy:
        with self.store.engine.connect() as conn:
            connected = accounts.all_accounts(conn)
        own = [a.email for a in connected] + [alias for a in connected for alias in a.aliases]
        return linking_policy(self.settings, own)

    @cached_property
    def facts(self) -> FactGatherer:
        ttl = CacheTTL(
            persons=timedelta(seconds=self.settings.cache.person_ttl_seconds),
            items=timedelta(seconds=self.settings.cache.items_ttl_seconds),
        )
        return FactGatherer(self.store, self.crm, ttl)

    def linker(self) -> Linker:
        return Linker(self.store, self.facts, self.policy())

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.store, self.crm)

    def syncer(self) -> Syncer:
        return Syncer(self.store, self.linker(), self.outbox)

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

    def provider_for(self, account: Account) -> MailProvider:
        if account.provider != "gmail":
            raise ConfigError(
                f"{account.email}: {account.provider} mailboxes are not supported yet"
            )
        from google.oauth2.credentials import Credentials as GoogleCredentials

        from maillink.providers.gmail import GmailProvider

        client = self.credentials.google_client()
        tokens = self.tokens(account)
        google = GoogleCredentials(
            token=None,
            refresh_token=tokens["refresh_token"],
            client_id=client["client_id"],
            client_secret=client.get("client_secret"),
            token_uri=client["token_uri"],
            scopes=tokens.get("scopes") or [GMAIL_SCOPE],
        )
        return GmailProvider(
            account.email,
            google,
            api_endpoint=self.settings.gmail.api_endpoint,
            aliases=account.aliases,
            page_size=self.settings.sync.page_size,
        )

    def store_accounts(self, *, active_only: bool = True) -> list[Account]:
        with self.store.engine.connect() as conn:
            found = accounts.all_accounts(conn)
        return [a for a in found if a.status == accounts.ACTIVE or not active_only]

    def connect_gmail(self, *, open_browser: bool, port: int = 0, out: Any = None) -> Account:
        """OAuth onboarding of one Gmail mailbox; its refresh token is stored encrypted."""
        from maillink.onboarding.google import connect_google

        connected = connect_google(
            self.credentials.google or {},
            api_endpoint=self.settings.gmail.api_endpoint,
            open_browser=open_browser,
            port=port,
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
        count = 0
        with self.store.transaction() as conn:
            for account in accounts.all_accounts(conn):
                if account.token:
                    accounts.set_token(conn, account.id, self.cipher.rotate(account.token))
                    count += 1
        return count

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
