"""Who owns an email in the CRM (docs/crm-writes.md, "Who owns the email").

The email belongs to the rep whose mailbox it came from: the sender's when a connected mailbox
sent it, else (inbound mail) the first connected recipient's, To before Cc, else the mailbox it
was synced from. Two copies of one email (two connected reps) therefore name the same owner,
whichever copy writes the activity. Each mailbox maps to a CRM user by address (its address
first, then its aliases, against the CRM users' addresses) unless `accounts.crm_user_id` names
one by hand; a mailbox without one writes activities without an owner (the CRM's default, the
token's user) and is reported by `maillink accounts`, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from maillink.crm.base import CRM, CRMAuthError, CRMError, CRMRefused
from maillink.model import CrmUser, Direction, Message

log = logging.getLogger(__name__)

BY_HAND = "override"  # accounts.crm_user_id
BY_EMAIL = "email"  # matched by address


@dataclass(frozen=True)
class Mailbox:
    """A connected mailbox as owners see it: its addresses and the CRM user set by hand."""

    email: str
    aliases: tuple[str, ...] = ()
    crm_user_id: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.lower() for a in (self.email, *self.aliases)))


@dataclass(frozen=True)
class Ownership:
    """A mailbox's CRM user (`source` says how it was found), or None and `reason` why not."""

    mailbox: str
    user: CrmUser | None
    source: str | None = None
    reason: str | None = None

    @property
    def user_id(self) -> str | None:
        return self.user.id if self.user is not None else None


def owning_mailbox(message: Message, mailboxes: Iterable[Mailbox]) -> str:
    """The address of the connected mailbox whose rep owns `message`.

    A connected sender owns it; an outbound email whose sender no mailbox lists (an unknown
    alias) belongs to the mailbox that sent it; an inbound one to its first connected
    recipient (To in order, then Cc), else to the mailbox it was synced from (a Bcc copy)."""
    by_address = {address: mb.email.lower() for mb in mailboxes for address in mb.addresses}
    if message.sender is not None and message.sender.email in by_address:
        return by_address[message.sender.email]
    if message.direction is Direction.INBOUND:
        for recipient in (*message.to, *message.cc):
            if recipient.email in by_address:
                return by_address[recipient.email]
    return message.account.lower()


def match_user(mailbox: Mailbox, users: Sequence[CrmUser] | None, error: str = "") -> Ownership:
    """The mailbox's CRM user: the one set by hand, else the one with its address (then an
    alias's). `users` None: the CRM's users could not be read (`error` says why); a user set by
    hand is then trusted as it is."""
    if mailbox.crm_user_id is not None:
        if users is None:
            return Ownership(mailbox.email, CrmUser(mailbox.crm_user_id, ""), BY_HAND)
        chosen = next((u for u in users if u.id == mailbox.crm_user_id), None)
        if chosen is None:
            why = f"CRM user {mailbox.crm_user_id} (set by hand) is not an active CRM user"
            return Ownership(mailbox.email, None, reason=why)
        return Ownership(mailbox.email, chosen, BY_HAND)
    if users is None:
        return Ownership(mailbox.email, None, reason=f"the CRM's users could not be read: {error}")
    by_email: dict[str, CrmUser] = {}
    for user in users:
        by_email.setdefault(user.email.lower(), user)
    for address in mailbox.addresses:
        if address in by_email:
            return Ownership(mailbox.email, by_email[address], BY_EMAIL)
    return Ownership(
        mailbox.email,
        None,
        reason="no CRM user has this address or its aliases (set one: maillink accounts owner)",
    )


def read_users(crm: CRM, *, passing: bool = True) -> tuple[list[CrmUser] | None, str]:
    """The CRM's users, or (None, why) when they cannot be read. A refusal for good (a token
    without the users scope) always gives None; a passing failure (the CRM unreachable, its
    rate limit) too when `passing`, else it is raised: a round then fails and is tried again
    rather than write its emails without their owners."""
    users = getattr(crm, "users", None)
    if users is None:  # an adapter with no user directory
        return None, "this CRM adapter does not list users"
    try:
        return list(users()), ""
    except (CRMRefused, CRMAuthError) as exc:
        log.warning("could not read the CRM's users: %s", exc)
        return None, str(exc)
    except CRMError as exc:
        if not passing:
            raise
        return None, str(exc)


def ownerships(
    crm: CRM, mailboxes: Sequence[Mailbox], *, passing: bool = True
) -> dict[str, Ownership]:
    """Each mailbox's ownership, by its (lower-cased) address (`read_users` for `passing`)."""
    users, error = read_users(crm, passing=passing)
    return {mb.email.lower(): match_user(mb, users, error) for mb in mailboxes}


class Owners:
    """The owner of each email of a round: its owning mailbox's CRM user id (None: none).

    The CRM's users are read (through the adapter's cache) by `resolve`, which the linker calls
    before its write transaction, or else at the first email that needs them."""

    def __init__(self, crm: CRM | None, mailboxes: Sequence[Mailbox]):
        self.crm = crm
        self.mailboxes = tuple(mailboxes)
        self._found: Mapping[str, Ownership] | None = None

    def resolve(self) -> Owners:
        """Read the CRM's users now (a CRM call: outside any write transaction). Raises the
        CRM's passing failures (`CRMUnavailable`, `CRMRateLimited`)."""
        if self._found is None:
            found = ownerships(self.crm, self.mailboxes, passing=False) if self.crm else {}
            self._found = found
        return self

    def owner_id(self, message: Message) -> str | None:
        self.resolve()
        assert self._found is not None
        found = self._found.get(owning_mailbox(message, self.mailboxes))
        return found.user_id if found is not None else None
