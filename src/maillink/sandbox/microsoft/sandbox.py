"""A local, stateful stand-in for the Microsoft identity platform and Microsoft Graph (mail).

Two HTTPS servers on 127.0.0.1 with certificates from a throwaway CA (`ca_bundle`): the login
host (`authority`: OIDC discovery, authorize, token, devicecode) and the Graph host
(`graph_url`: /me, /users/{id}, messages, mailFolders message delta, $batch). MSAL Python works
against it unchanged with instance discovery off, and nothing in maillink knows it is a sandbox.

    with MicrosoftSandbox() as ms:
        ms.add_mailbox("rep@contoso.example", "Rep")
        ms.add_message("rep@contoso.example", "inbox", internet_message_id="<a@x>",
                       subject="Hi", sender="ana@client.example",
                       to=["rep@contoso.example"], received=now)
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from maillink.sandbox._server import FaultPlan, Meter, ServerThread, install_faults
from maillink.sandbox.microsoft.batch import BATCH_PART, Traffic
from maillink.sandbox.microsoft.directory import register_directory_routes
from maillink.sandbox.microsoft.grants import Grant, IdentityState, User
from maillink.sandbox.microsoft.graph import GraphContext, register_graph_routes
from maillink.sandbox.microsoft.identity import register_identity_routes
from maillink.sandbox.microsoft.mailbox import (
    Mailbox,
    Recipient,
    StoredMessage,
    message_props,
    new_conversation_id,
    new_ids,
    recipient,
)
from maillink.sandbox.microsoft.odata import graph_error
from maillink.sandbox.microsoft.subscriptions import (
    GraphSubscriptions,
    register_subscription_routes,
)
from maillink.sandbox.microsoft.tls import ThrowawayCA

__all__ = ["MicrosoftSandbox"]

DEFAULT_SCOPES = ("Mail.ReadBasic", "User.Read")


def _key(email: str) -> str:
    return email.strip().lower()


class MicrosoftSandbox:
    """Microsoft identity + Graph mail on 127.0.0.1 over TLS, with faults, a meter, mailboxes."""

    def __init__(
        self,
        *,
        client_id: str = "sandbox-ms-client",
        tenant: str = "sandbox-tenant",
        client_secret: str | None = None,
        filtered_delta_cap: int = 5000,
        access_token_lifetime: int = 3600,
        rotation_grace: float = 30.0,
        device_interval: int = 1,
        latency: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.tenant = tenant
        self.client_secret = client_secret
        self.faults = FaultPlan()
        self.meter = Meter()
        self._lock = threading.RLock()
        self._mailboxes: dict[str, Mailbox] = {}
        self._ids = new_ids(uuid.uuid4().hex)
        self._consent_as: str | None = None
        self._login_url = ""
        self._graph_base = ""
        self.identity = IdentityState(
            client_id,
            client_secret,
            tenant,
            str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{tenant}.sandbox")),
            access_token_lifetime=access_token_lifetime,
            rotation_grace=rotation_grace,
            device_interval=device_interval,
        )
        self.traffic = Traffic()
        # Change notifications: /subscriptions, the handshake, notifications on new mail.
        self.subscriptions = GraphSubscriptions(self.identity.tenant_id, client_id)
        self._graph = GraphContext(
            self._lock,
            self._mailboxes,
            self.identity,
            self.meter,
            self.traffic,
            filtered_delta_cap,
            latency,
            lambda: self._graph_base,
        )
        self._ca: ThrowawayCA | None = None
        self._servers: list[ServerThread] = []
        self.login_app = self._login_app()
        self.graph_app = self._graph_app()

    # --- servers -------------------------------------------------------------------------

    def _login_app(self) -> Flask:
        app = Flask(f"{__name__}.login.{id(self)}")
        register_identity_routes(
            app, self.identity, self.meter, self._consenting_mailbox, lambda: self._login_url
        )
        install_faults(app, self.faults, self.meter)
        _count_http(app, self.meter)
        return app

    def _graph_app(self) -> Flask:
        app = Flask(f"{__name__}.graph.{id(self)}")
        register_subscription_routes(app, self._graph, self.subscriptions)
        register_directory_routes(app, self._graph)
        register_graph_routes(app, self._graph)

        @app.errorhandler(HTTPException)
        def http_error(error: HTTPException) -> Response:
            code = error.code or 500
            return graph_error(code, "BadRequest" if code < 500 else "generalException", error.name)

        @app.errorhandler(Exception)
        def internal_error(error: Exception) -> Response:
            app.logger.exception("sandbox error")
            return graph_error(500, "generalException", "General exception while processing.")

        install_faults(app, self.faults, self.meter)
        _count_http(app, self.meter)
        return app

    def start(self) -> MicrosoftSandbox:
        if self._servers:
            raise RuntimeError("the Microsoft sandbox is already running")
        self._ca = ThrowawayCA()
        login = ServerThread(self.login_app, ssl_context=self._ca.server_context()).start()
        graph = ServerThread(self.graph_app, ssl_context=self._ca.server_context()).start()
        self._servers = [login, graph]
        self._login_url, self._graph_base = login.url, graph.url
        return self

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop()
        if self._ca is not None:
            self._ca.remove()
            self._ca = None

    def __enter__(self) -> MicrosoftSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def authority(self) -> str:
        return f"{self._login_url}/{self.tenant}"

    @property
    def graph_url(self) -> str:
        return f"{self._graph_base}/v1.0"

    @property
    def ca_bundle(self) -> str:
        if self._ca is None:
            raise RuntimeError("start the sandbox first: its CA is made at start")
        return self._ca.ca_bundle

    # --- mailboxes, consent, tokens ------------------------------------------------------

    def add_mailbox(self, email: str, display_name: str = "") -> None:
        key = _key(email)
        with self._lock:
            if key in self._mailboxes:
                raise ValueError(f"mailbox {email} already exists")
            user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{key}"))
            name = display_name or email.split("@")[0]
            self._mailboxes[key] = Mailbox(key, email.strip(), name, user_id)
            self.identity.users[key] = User(email.strip(), user_id, name)

    def add_folder(self, email: str, name: str) -> str:
        """A user folder; returns its id (use the id or the name as a folder reference)."""
        with self._lock:
            return self._mailbox(email).add_folder(name)

    def folder_id(self, email: str, name: str) -> str:
        with self._lock:
            return self._mailbox(email).folders[name.lower()]

    def user_id(self, email: str) -> str:
        with self._lock:
            return self._mailbox(email).user_id

    @property
    def consent_as(self) -> str | None:
        """The mailbox the next sign-in consents as; None makes the user decline."""
        return self._consent_as

    @consent_as.setter
    def consent_as(self, email: str | None) -> None:
        if email is not None:
            self._mailbox(email)
        self._consent_as = email

    def _consenting_mailbox(self) -> str | None:
        return None if self._consent_as is None else _key(self._consent_as)

    def access_token(self, email: str, scopes: Sequence[str] = DEFAULT_SCOPES) -> str:
        """An access token as if `email` had consented (for tests that skip the sign-in)."""
        self._mailbox(email)
        return str(
            self.identity.issue(Grant(_key(email), tuple(scopes)), self._login_url)["access_token"]
        )

    def approve_device_code(self, user_code: str | None = None, email: str | None = None) -> None:
        """The user enters the code (None: every pending one) and signs in as `email`."""
        who = email or self._consent_as
        if who is None:
            raise ValueError("approve_device_code needs an email (or consent_as)")
        self.identity.approve_device(user_code, _key(who))

    def revoke(self, email: str) -> None:
        """Its refresh tokens now get invalid_grant (AADSTS50173), its access tokens 401."""
        self._mailbox(email)
        self.identity.revoke(_key(email))

    def expire_access_tokens(self, email: str) -> None:
        self.identity.expire_access_tokens(_key(email))

    # --- delegated consent: web redirect URIs, tenant admins, user consent blocked --------

    def register_redirect_uri(self, uri: str) -> None:
        """A web redirect URI registered for the app (matched exactly; loopback ones without a
        path are always accepted, as MSAL's loopback flow needs)."""
        with self.identity.lock:
            self.identity.redirect_uris.add(uri)

    def make_admin(self, email: str) -> None:
        """The user becomes a tenant administrator (who may grant admin consent)."""
        self._mailbox(email)
        with self.identity.lock:
            self.identity.admins.add(_key(email))

    def block_user_consent(self, blocked: bool = True) -> None:
        """The tenant's policy lets no user consent to apps (until an administrator grants
        consent for the whole tenant at /{tenant}/adminconsent)."""
        with self.identity.lock:
            self.identity.user_consent_blocked = blocked

    @property
    def admin_consented(self) -> bool:
        """Whether a tenant administrator granted the app's permissions for every user."""
        return self.identity.admin_consented

    # --- the tenant's directory, application permissions (client credentials) ----------

    def grant_app_permissions(self, *permissions: str) -> None:
        """An admin grants the app these application permissions (e.g. Mail.ReadBasic.All);
        tokens issued from now on carry them."""
        with self.identity.lock:
            self.identity.app_permissions.update(permissions)

    def revoke_app_permissions(self, *permissions: str) -> None:
        """Taken back: tokens issued from now on lack them (app tokens already issued are
        dropped, as if they had expired)."""
        with self.identity.lock:
            self.identity.app_permissions.difference_update(permissions)
            for token in [t for t, r in self.identity.access.items() if r.grant.app]:
                del self.identity.access[token]

    def add_group(self, display_name: str, members: Iterable[str] = ()) -> str:
        """A security group; returns its id."""
        group_id = self._graph.directory.add_group(display_name)
        for email in members:
            self.add_group_member(group_id, email)
        return group_id

    def add_group_member(self, group_id: str, email: str) -> None:
        self._mailbox(email)
        with self._graph.directory.lock:
            self._graph.directory.group(group_id).members.add(_key(email))

    def remove_group_member(self, group_id: str, email: str) -> None:
        with self._graph.directory.lock:
            self._graph.directory.group(group_id).members.discard(_key(email))

    def disable_user(self, email: str, disabled: bool = True) -> None:
        """accountEnabled false (or true again) on the user."""
        self._mailbox(email)
        disabled_users = self._graph.directory.disabled
        with self._graph.directory.lock:
            if disabled:
                disabled_users.add(_key(email))
            else:
                disabled_users.discard(_key(email))

    def remove_user(self, email: str) -> None:
        """The user (and its mailbox) leaves the tenant."""
        key = _key(email)
        self._mailbox(email)
        self.identity.revoke(key)
        with self._lock:
            del self._mailboxes[key]
            self.identity.users.pop(key, None)
        with self._graph.directory.lock:
            for group in self._graph.directory.groups.values():
                group.members.discard(key)

    def set_exchange_mailbox(self, email: str, enabled: bool) -> None:
        """Whether the user has an Exchange Online mailbox: without one (no licence, or hosted
        on-premises) the user keeps its `mail` address in the directory, and Graph's mail
        endpoints answer 404 MailboxNotEnabledForRESTAPI."""
        with self._lock:
            self._mailbox(email).exchange = enabled

    def disable_app(self, disabled: bool = True) -> None:
        """An admin disables the app in the tenant (Enterprise applications → Enabled for users
        to sign in: No): client credentials get `unauthorized_client` (AADSTS7000112) and the
        app tokens already issued stop working."""
        with self.identity.lock:
            self.identity.app_disabled = disabled
            for token in [t for t, r in self.identity.access.items() if r.grant.app]:
                del self.identity.access[token]

    def restrict_app_access(self, group_id: str | None) -> None:
        """Exchange Online's application access policy (`New-ApplicationAccessPolicy
        -AccessRight RestrictAccess -PolicyScopeGroupId …`): an app token reads only the mail
        of this group's members; None removes the policy."""
        if group_id is not None:
            self._graph.directory.group(group_id)
        with self._graph.directory.lock:
            self._graph.directory.policy_group = group_id

    # --- mail ----------------------------------------------------------------------------

    def add_message(
        self,
        email: str,
        folder: str,
        *,
        internet_message_id: str | None,
        subject: str,
        sender: Recipient | None,
        to: Iterable[Recipient],
        received: datetime,
        conversation_id: str | None = None,
        cc: Iterable[Recipient] = (),
        bcc: Iterable[Recipient] = (),
        sent: datetime | None = None,
        is_read: bool = False,
        is_draft: bool = False,
        internet_message_headers: Sequence[tuple[str, str]] | None = None,
    ) -> str:
        """Deliver (or file) a message; returns its immutable id. Naive datetimes are UTC."""
        received = received.replace(tzinfo=UTC) if received.tzinfo is None else received
        sent = received if sent is None else sent
        sent = sent.replace(tzinfo=UTC) if sent.tzinfo is None else sent
        with self._lock:
            mailbox = self._mailbox(email)
            name = mailbox.folder_name(folder)
            if name is None:
                raise KeyError(f"no folder {folder} in {email}")
            message_id = self._ids()
            conversation = conversation_id or new_conversation_id(f"{mailbox.key}/{message_id}")
            props = message_props(
                message_id,
                folder_id=mailbox.folders[name],
                conversation_id=conversation,
                conversation_index=mailbox.next_conversation_index(conversation, sent),
                internet_message_id=internet_message_id,
                subject=subject,
                sender=recipient(sender) if sender is not None else None,
                to=[recipient(r) for r in to],
                cc=[recipient(r) for r in cc],
                bcc=[recipient(r) for r in bcc],
                received=received,
                sent=sent,
                is_read=is_read,
                is_draft=is_draft,
                headers=internet_message_headers,
            )
            mailbox.add(StoredMessage(message_id, name, props))
        self.subscriptions.changed(mailbox.key, name, "created", message_id)
        return message_id

    def add_message_from_headers(
        self,
        email: str,
        folder: str,
        headers: Sequence[tuple[str, str]],
        *,
        received: datetime,
        conversation_id: str | None = None,
    ) -> str:
        """A message given as RFC 5322 headers (as the Google sandbox takes them), for seeding."""
        fields: dict[str, list[str]] = {}
        for name, value in headers:
            fields.setdefault(name.lower(), []).append(value)

        def addresses(name: str) -> list[Recipient]:
            return [(n, a) for n, a in getaddresses(fields.get(name, [])) if a]

        senders = addresses("from")
        sent = received
        if fields.get("date"):
            try:
                sent = parsedate_to_datetime(fields["date"][0])
            except (TypeError, ValueError, IndexError):
                sent = received
        return self.add_message(
            email,
            folder,
            internet_message_id=next(iter(fields.get("message-id") or []), None),
            subject=(fields.get("subject") or [""])[0],
            sender=senders[0] if senders else None,
            to=addresses("to"),
            cc=addresses("cc"),
            bcc=addresses("bcc"),
            received=received,
            sent=sent,
            conversation_id=conversation_id,
            internet_message_headers=list(headers),
        )

    def add_seed_thread(self, index: int, messages: Iterable[Any]) -> list[str]:
        """A generated thread's messages (`sandbox.seed.SeedMessage`) into the mailboxes of this
        sandbox that hold them (for `maillink demo`): a rep's own mail into sentitems, the rest
        into inbox, one conversation per thread. Mailboxes not added here are skipped."""
        added = []
        for message in messages:
            for mailbox in message.mailboxes:
                if _key(mailbox) not in self._mailboxes:
                    continue
                added.append(
                    self.add_message_from_headers(
                        mailbox,
                        "sentitems" if message.sent_by == mailbox else "inbox",
                        message.headers,
                        received=message.date,
                        conversation_id=new_conversation_id(f"seed/{_key(mailbox)}/{index}"),
                    )
                )
        return added

    def move_message(self, email: str, message_id: str, folder: str) -> None:
        with self._lock:
            mailbox = self._mailbox(email)
            name = mailbox.folder_name(folder)
            if name is None:
                raise KeyError(f"no folder {folder} in {email}")
            mailbox.move(message_id, name)
        self.subscriptions.changed(mailbox.key, name, "created", message_id)

    def update_message(self, email: str, message_id: str, **fields: Any) -> None:
        """Change properties (Graph names, e.g. isRead=True); delta then shows only those."""
        with self._lock:
            mailbox = self._mailbox(email)
            mailbox.update(message_id, dict(fields), datetime.now(UTC))
            folder = mailbox.live(message_id).folder
        self.subscriptions.changed(mailbox.key, folder, "updated", message_id)

    def delete_message(self, email: str, message_id: str) -> None:
        with self._lock:
            self._mailbox(email).delete(message_id)

    def expire_delta(self, email: str, folder: str, code: str = "syncStateNotFound") -> None:
        """Every state token of the folder now answers 410 Gone with `code` and a Location."""
        with self._lock:
            mailbox = self._mailbox(email)
            name = mailbox.folder_name(folder) or folder
            mailbox.expire(name)
            self._graph.expired_code[(mailbox.key, name)] = code

    def replay_next_delta(self, email: str, folder: str) -> None:
        """The folder's next delta page repeats the items of the page served before it."""
        with self._lock:
            mailbox = self._mailbox(email)
            mailbox.replay.add(mailbox.folder_name(folder) or folder)

    def message(self, email: str, message_id: str) -> dict[str, Any]:
        with self._lock:
            stored = self._mailbox(email).live(message_id)
            return {"id": stored.id, "folder": stored.folder, **stored.props}

    def message_count(self, email: str, folder: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for m in self._mailbox(email).messages.values()
                if not m.deleted and (folder is None or m.folder == folder.lower())
            )

    # --- traffic -------------------------------------------------------------------------

    def max_concurrency(self, email: str) -> int:
        """The most requests on the mailbox that were in flight at the same time."""
        with self.traffic.lock:
            return self.traffic.highest.get(_key(email), 0)

    def request_log(self, email: str) -> list[tuple[float, str]]:
        """(time.monotonic() at arrival, path) of each Graph request on the mailbox."""
        with self.traffic.lock:
            return list(self.traffic.log.get(_key(email), []))

    def _mailbox(self, email: str) -> Mailbox:
        try:
            return self._mailboxes[_key(email)]
        except KeyError:
            raise KeyError(f"no mailbox {email} in the Microsoft sandbox") from None


def _count_http(app: Flask, meter: Meter) -> None:
    """Count every HTTP request received as "http" (a $batch once, not its parts)."""
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not environ.get(BATCH_PART):
            meter.count("http")
        return inner(environ, start_response)

    app.wsgi_app = middleware  # type: ignore[method-assign]
