"""Google Workspace in the sandbox: its directory, service accounts and domain-wide delegation.

A service account's key is the JSON file Google Cloud gives (a fresh RSA key each time); an admin
grants the account domain-wide delegation for some scopes (the Admin console's "Domain-wide
delegation" page: client id + scopes). The account then signs a JWT assertion
(RFC 7523, grant type `urn:ietf:params:oauth:grant-type:jwt-bearer`) with `sub` = a user of the
Workspace, and the token endpoint answers an access token that reads that user's data within the
granted scopes. The assertion's audience is the token endpoint: the sandbox's URL, or Google's
(google-auth names it whatever the key's token_uri). Refusals are Google's: `invalid_grant` for a bad signature, bad times, another
audience, an unknown account or a user that is not in the Workspace; `unauthorized_client` (401)
when the client id is not delegated or a scope asked is not among those granted.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from maillink.sandbox.google.oauth import JWT_BEARER, SUPPORTED_SCOPES, Grant, OAuthError

__all__ = ["JWT_BEARER", "DirectoryUser", "ServiceAccount", "Workspace", "WorkspaceControls"]

SCOPE_DIRECTORY_USERS = "https://www.googleapis.com/auth/admin.directory.user.readonly"
DELEGABLE_SCOPES = SUPPORTED_SCOPES | {SCOPE_DIRECTORY_USERS}
MAX_ASSERTION_SECONDS = 3600  # Google: "a short-lived token (60 minutes)"
CLOCK_SKEW_SECONDS = 300
CUSTOMER_ID = "C03sandbx"
# The audiences Google's token endpoint accepts besides its own URL: google-auth always names
# Google's (`_GOOGLE_OAUTH2_TOKEN_ENDPOINT`), whatever the key's token_uri.
GOOGLE_AUDIENCES = (
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
    "https://accounts.google.com/o/oauth2/token",
)

NOT_DELEGATED = (
    "Client is unauthorized to retrieve access tokens using this method, or client not "
    "authorized for any of the scopes requested."
)
BAD_TIMES = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)
BAD_USER = "Invalid email or User ID"


@dataclass(frozen=True)
class ServiceAccount:
    """A service account and the public half of its key (the private half is only in its file)."""

    client_email: str
    client_id: str
    key_id: str
    public_key: rsa.RSAPublicKey = field(repr=False)


@dataclass
class DirectoryUser:
    """A user of the Workspace directory (Admin SDK `users` resource, the fields maillink reads)."""

    email: str
    id: str
    admin: bool = False
    suspended: bool = False

    def resource(self) -> dict[str, Any]:
        local = self.email.split("@", 1)[0]
        return {
            "kind": "admin#directory#user",
            "id": self.id,
            "etag": f'"{self.id}"',
            "primaryEmail": self.email,
            "name": {"givenName": local, "familyName": "", "fullName": local},
            "isAdmin": self.admin,
            "suspended": self.suspended,
            "customerId": CUSTOMER_ID,
            "orgUnitPath": "/",
            "isMailboxSetup": True,
        }


class Workspace:
    """One Google Workspace customer: its domains, users, service accounts and delegations.

    Callers hold the sandbox lock. `token_uri` says the audience an assertion must name.
    """

    def __init__(self, token_uri: Callable[[], str], clock: Callable[[], float] = time.time):
        self.token_uri = token_uri
        self.clock = clock
        self.domains: set[str] = set()
        self.users: dict[str, DirectoryUser] = {}
        self.service_accounts: dict[str, ServiceAccount] = {}
        self.delegations: dict[str, frozenset[str]] = {}
        self._ids = itertools.count(100_000_000_000_000_000_001)

    # -- the directory -------------------------------------------------------------------------
    def add_user(
        self, email: str, *, admin: bool = False, suspended: bool = False
    ) -> DirectoryUser:
        key = email.strip().lower()
        domain = key.rpartition("@")[2]
        if not domain:
            raise ValueError(f"not an email address: {email!r}")
        self.domains.add(domain)
        user = DirectoryUser(key, str(next(self._ids)), admin=admin, suspended=suspended)
        self.users[key] = user
        return user

    def remove_user(self, email: str) -> None:
        if self.users.pop(email.strip().lower(), None) is None:
            raise KeyError(f"no user {email} in the sandbox's Workspace directory")

    def listed(self, domain: str | None) -> list[DirectoryUser]:
        """The directory's users (of `domain`, or all), by address."""
        return sorted(
            (u for u in self.users.values() if domain is None or u.email.endswith("@" + domain)),
            key=lambda u: u.email,
        )

    # -- service accounts and delegation ---------------------------------------------------------
    def create_service_account(self, name: str, project: str, token_uri: str) -> dict[str, Any]:
        """A new service account; returns its JSON key file as Google Cloud gives it."""
        client_email = f"{name}@{project}.iam.gserviceaccount.com"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        account = ServiceAccount(
            client_email=client_email,
            client_id=str(next(self._ids)),
            key_id=uuid.uuid4().hex,
            public_key=key.public_key(),
        )
        self.service_accounts[client_email] = account
        base = token_uri.rsplit("/", 1)[0]
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": account.key_id,
            "private_key": pem,
            "client_email": client_email,
            "client_id": account.client_id,
            "auth_uri": f"{base}/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": f"{base}/oauth2/v1/certs",
            "client_x509_cert_url": f"{base}/robot/v1/metadata/x509/{client_email}",
            "universe_domain": "googleapis.com",
        }

    def delegate(self, client_id: str, scopes: Iterable[str]) -> None:
        """Domain-wide delegation of `scopes` to the client id (replaces its earlier scopes)."""
        granted = frozenset(scopes)
        unknown = sorted(granted - DELEGABLE_SCOPES)
        if not granted or unknown:
            raise ValueError(f"unsupported scopes {unknown or sorted(granted)!r}")
        if client_id not in {a.client_id for a in self.service_accounts.values()}:
            raise KeyError(f"no service account with client id {client_id}")
        self.delegations[client_id] = granted

    def undelegate(self, client_id: str) -> None:
        self.delegations.pop(client_id, None)

    # -- the token endpoint's JWT bearer grant ---------------------------------------------------
    def assertion_grant(self, form: Mapping[str, str]) -> Grant:
        """The grant a jwt-bearer token request stands for, checked as Google checks it."""
        assertion = form.get("assertion")
        if not assertion:
            raise OAuthError(400, "invalid_request", "Missing required parameter: assertion")
        header, claims, signed, signature = _parts(assertion)
        account = self.service_accounts.get(str(claims.get("iss", "")))
        if account is None:
            raise OAuthError(400, "invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256" or header.get("kid") not in (None, account.key_id):
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            account.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.") from None
        self._check_times(claims)
        if claims.get("aud") not in (self.token_uri(), *GOOGLE_AUDIENCES):
            raise OAuthError(
                400,
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The expected value was {self.token_uri()}",
            )
        scopes = tuple(str(claims.get("scope", "")).split())
        if not scopes or not set(scopes) <= DELEGABLE_SCOPES:
            raise OAuthError(400, "invalid_scope", "Invalid OAuth scope or ID token audience.")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            # The account's own token reads no mailbox and no directory: not modelled.
            raise OAuthError(
                400, "invalid_request", "sandbox: only delegated tokens (with sub) are modelled"
            )
        user = self.users.get(subject.strip().lower())
        if user is None or user.suspended:
            raise OAuthError(400, "invalid_grant", BAD_USER)
        if not set(scopes) <= self.delegations.get(account.client_id, frozenset()):
            raise OAuthError(401, "unauthorized_client", NOT_DELEGATED)
        return Grant(user.email, scopes, account.client_id)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise OAuthError(400, "invalid_grant", BAD_TIMES)
        if (
            iat > now + CLOCK_SKEW_SECONDS
            or exp < now - CLOCK_SKEW_SECONDS
            or exp <= iat
            or exp - iat > MAX_ASSERTION_SECONDS
        ):
            raise OAuthError(400, "invalid_grant", BAD_TIMES)


def _parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """A compact JWS's header, claims, signed bytes and signature (invalid_grant if malformed)."""
    pieces = assertion.split(".")
    try:
        if len(pieces) != 3:
            raise ValueError("not three parts")
        header = json.loads(_unb64(pieces[0]))
        claims = json.loads(_unb64(pieces[1]))
        signature = _unb64(pieces[2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not JSON objects")
    except (ValueError, binascii.Error):
        raise OAuthError(400, "invalid_grant", "Invalid JWT: malformed assertion") from None
    return header, claims, f"{pieces[0]}.{pieces[1]}".encode("ascii"), signature


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WorkspaceControls:
    """The admin's side of the sandbox's Workspace (`GoogleSandbox.workspace`), lock held.

    key = google.workspace.create_service_account()          # the JSON key file
    google.workspace.add_user("admin@example.com", admin=True)
    google.workspace.add_user("rep@example.com")              # with a mailbox
    google.workspace.delegate(key["client_id"], [SCOPE_METADATA, SCOPE_DIRECTORY_USERS])
    """

    def __init__(
        self,
        lock: threading.RLock,
        state: Workspace,
        *,
        ensure_mailbox: Callable[[str], None],
        revoke_email: Callable[[str], None],
    ) -> None:
        self._lock = lock
        self.state = state
        self._ensure_mailbox = ensure_mailbox
        self._revoke_email = revoke_email

    def add_user(self, email: str, *, admin: bool = False, suspended: bool = False) -> str:
        """A user of the Workspace (its domain joins the Workspace), with a Gmail mailbox;
        returns its directory id."""
        with self._lock:
            self._ensure_mailbox(email)
            return self.state.add_user(email, admin=admin, suspended=suspended).id

    def remove_user(self, email: str) -> None:
        """The user is deleted from the directory: its tokens stop working (its mailbox stays
        in the sandbox, unreachable through delegation)."""
        with self._lock:
            self.state.remove_user(email)
            self._revoke_email(email.strip().lower())

    def suspend_user(self, email: str, suspended: bool = True) -> None:
        with self._lock:
            self.state.users[email.strip().lower()].suspended = suspended

    def create_service_account(
        self, name: str = "maillink-sync", project: str = "sandbox-project"
    ) -> dict[str, Any]:
        """A new service account's JSON key file (a fresh RSA key; token_uri the sandbox's)."""
        with self._lock:
            return self.state.create_service_account(name, project, self.state.token_uri())

    def delegate(self, client_id: str, scopes: Iterable[str]) -> None:
        """Grant (or replace) the client id's domain-wide delegation for `scopes`."""
        with self._lock:
            self.state.delegate(client_id, scopes)

    def undelegate(self, client_id: str) -> None:
        with self._lock:
            self.state.undelegate(client_id)

    def user_id(self, email: str) -> str:
        with self._lock:
            return self.state.users[email.strip().lower()].id
