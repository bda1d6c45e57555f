"""maillink's webhooks at Pipedrive: which ones the daemon needs, which ones exist, and how to
make the first the second (`maillink crm webhooks install|status`, docs/operations.md).

maillink needs one v2 webhook per object whose changes it acts on (`maillink.ops.webhooks`:
deals, leads, projects and persons, every action), sending to `{public URL}/webhooks/pipedrive`
with the basic auth of credentials.json `webhook`. A webhook is maillink's when its
`subscription_url` ends in that path, whatever the host: a moved daemon's old webhooks are
maillink's too, and are replaced. Every other webhook of the company is left alone.

Pipedrive never gives the password back, so a wrong password cannot be seen on a webhook: one
whose last delivery the daemon refused with 401 is re-created, and `force` re-creates them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from maillink.crm.base import CRMRefused
from maillink.crm.pipedrive_http import PipedriveHTTP

ENDPOINT_PATH = "/webhooks/pipedrive"  # the daemon's route (maillink.ops.server)
VERSION = "2.0"
ACTION = "*"  # every action: a create, a change or a delete can all make cached facts stale
# The objects whose changes the daemon acts on (`maillink.ops.webhooks`: the tests hold the two
# together), in the order their webhooks are created.
NEEDED_OBJECTS: tuple[str, ...] = ("deal", "lead", "person", "project")
# Webhooks v2 offers `project` (Pipedrive's webhooks guide), but the published v1 spec's enum
# does not list it and a company without Projects refuses it: then projects are polled.
OPTIONAL_OBJECTS = frozenset({"project"})

UNAUTHORIZED = 401  # the daemon's answer to a wrong user name or password


def subscription_url(public_url: str) -> str:
    """`{public_url}/webhooks/pipedrive`, the address Pipedrive posts to (a `public_url` that
    already ends in that path is taken as it is). The caller has checked the URL itself."""
    url = public_url.rstrip("/")
    return url if urlsplit(url).path.endswith(ENDPOINT_PATH) else url + ENDPOINT_PATH


def is_maillinks(url: str | None) -> bool:
    """Whether a webhook with this subscription URL is maillink's (its path is the endpoint's)."""
    if not url:
        return False
    try:
        path = urlsplit(url).path
    except ValueError:
        return False
    return path.rstrip("/").endswith(ENDPOINT_PATH)


@dataclass(frozen=True)
class BasicAuth:
    """The user name and password the daemon's endpoint expects (credentials.json `webhook`)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Webhook:
    """One webhook as Pipedrive lists it (the password is never given back)."""

    id: int
    event_action: str
    event_object: str
    subscription_url: str
    version: str | None
    http_auth_user: str | None
    is_active: bool
    last_delivery_time: str | None
    last_http_status: int | None
    name: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Webhook:
        status = data.get("last_http_status")
        return cls(
            id=int(data["id"]),
            event_action=str(data.get("event_action") or ""),
            event_object=str(data.get("event_object") or ""),
            subscription_url=str(data.get("subscription_url") or ""),
            version=data.get("version"),
            http_auth_user=data.get("http_auth_user"),
            is_active=data.get("is_active") in (1, True, "1"),
            last_delivery_time=data.get("last_delivery_time"),
            last_http_status=status if isinstance(status, int) else None,
            name=data.get("name"),
        )


@dataclass(frozen=True)
class Wanted:
    """What maillink's webhooks must be: where they post and as whom."""

    url: str
    user: str | None  # None: not known (no `webhook` in credentials.json), not judged

    def problems(self, hook: Webhook) -> list[str]:
        """Why `hook` does not do maillink's job (empty: it does)."""
        found = []
        if hook.subscription_url != self.url:
            found.append(f"posts to {hook.subscription_url}, not {self.url}")
        if hook.version != VERSION:
            found.append(f"version {hook.version}, not {VERSION}")
        if hook.event_action != ACTION:
            found.append(f"action {hook.event_action!r}, not {ACTION!r}")
        if hook.event_object not in NEEDED_OBJECTS:
            found.append(f"object {hook.event_object!r} is not one maillink uses")
        if self.user is not None and hook.http_auth_user != self.user:
            found.append("another basic-auth user than credentials.json webhook.username")
        if not hook.is_active:
            found.append("inactive")
        if hook.last_http_status == UNAUTHORIZED:
            found.append("its last delivery was refused with 401 (wrong password?)")
        return found


@dataclass
class Plan:
    """What `install` found and did, object by object."""

    url: str
    kept: dict[str, int] = field(default_factory=dict)  # object -> webhook id
    created: dict[str, int] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)  # maillink's webhooks deleted
    not_offered: list[str] = field(default_factory=list)  # objects Pipedrive refused

    @property
    def changed(self) -> bool:
        return bool(self.created or self.removed)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _sorted(hooks: Iterable[Webhook]) -> list[Webhook]:
    return sorted(hooks, key=lambda h: h.id)


class PipedriveWebhooks:
    """The company's webhooks through Pipedrive's API (`/api/v1/webhooks`)."""

    def __init__(self, http: PipedriveHTTP):
        self.http = http

    def _call(
        self, operation: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One call, counted in tokens by the transport like every other (its TOKEN_COSTS)."""
        return self.http.call(operation, method, path, json=body)

    def all(self) -> list[Webhook]:
        envelope = self._call("webhooks.list", "GET", "/api/v1/webhooks")
        data = envelope.get("data") or []
        return _sorted(Webhook.from_json(d) for d in data if isinstance(d, dict) and "id" in d)

    def maillinks(self) -> list[Webhook]:
        return [h for h in self.all() if is_maillinks(h.subscription_url)]

    def create(self, event_object: str, url: str, auth: BasicAuth) -> Webhook:
        body = {
            "subscription_url": url,
            "event_action": ACTION,
            "event_object": event_object,
            "name": f"maillink {event_object}",
            "http_auth_user": auth.username,
            "http_auth_password": auth.password,
            "version": VERSION,
        }
        envelope = self._call("webhooks.create", "POST", "/api/v1/webhooks", body)
        return Webhook.from_json(envelope["data"])

    def delete(self, webhook_id: int) -> None:
        self._call("webhooks.delete", "DELETE", f"/api/v1/webhooks/{webhook_id}")

    def install(self, url: str, auth: BasicAuth, *, force: bool = False) -> Plan:
        """Make maillink's webhooks exactly one good webhook per needed object: keep the good
        ones (all re-created with `force`), create the missing ones, then delete the rest of
        maillink's (wrong URL, version, user, inactive, refused, duplicates). Idempotent."""
        wanted = Wanted(url, auth.username)
        plan = Plan(url)
        ours = self.maillinks()
        for event_object in NEEDED_OBJECTS:
            good = [h for h in ours if h.event_object == event_object and not wanted.problems(h)]
            if good and not force:
                plan.kept[event_object] = good[0].id
                continue
            try:
                plan.created[event_object] = self.create(event_object, url, auth).id
            except CRMRefused as refused:
                if event_object not in OPTIONAL_OBJECTS or refused.status != 400:
                    raise
                plan.not_offered.append(event_object)
        keep = set(plan.kept.values()) | set(plan.created.values())
        for hook in ours:
            if hook.id not in keep:
                self.delete(hook.id)
                plan.removed.append(hook.id)
        return plan

    def status(self, url: str | None, user: str | None) -> dict[str, Any]:
        """maillink's webhooks with Pipedrive's state and what is wrong with each, and the
        objects no good webhook covers. Without `url`, the URL is not judged."""
        ours = self.maillinks()
        rows = []
        covered: set[str] = set()
        for hook in ours:
            wanted = Wanted(url if url is not None else hook.subscription_url, user)
            problems = wanted.problems(hook)
            if problems:
                state = "broken"
            elif hook.event_object in covered:
                state = "duplicate"
            else:
                covered.add(hook.event_object)
                state = "ok"
                failed = hook.last_http_status
                if failed is not None and not 200 <= failed < 300:
                    # The receiver's trouble (down, proxy): install would not change it.
                    state = "failing"
                    answer = f"HTTP {failed}" if failed else "no answer"
                    problems = [f"its last delivery failed ({answer}): is the daemon reachable?"]
            rows.append({**asdict(hook), "state": state, "problems": problems})
        missing = [o for o in NEEDED_OBJECTS if o not in covered]
        return {"url": url, "webhooks": rows, "missing": missing}
