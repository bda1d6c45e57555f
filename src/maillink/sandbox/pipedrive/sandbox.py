"""A local, stateful Pipedrive: persons, deals, leads, projects, activity types and activities.

It answers the endpoints maillink uses, in the shapes of Pipedrive's OpenAPI specs (v2 cursor
pagination, v1 start/limit), checks the API token like Pipedrive (`x-api-token` header,
`api_token` query parameter, or an OAuth `Authorization: Bearer`), validates activity bodies as
strictly as API v2 does, charges each call its token cost, and fails on demand: the burst limit and
the daily token budget (429s a client can tell apart), injected faults, and lost responses (the
write is done, the answer never arrives).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request

from maillink.sandbox._server import (
    FaultPlan,
    LostResponses,
    Meter,
    ServerThread,
    UserActions,
    install_faults,
)
from maillink.sandbox.pipedrive.admin import ADMIN_COSTS, admin_routes
from maillink.sandbox.pipedrive.data import (
    DEFAULT_ACTIVITY_TYPES,
    PROJECT_STATUSES,
    Deal,
    Lead,
    Person,
    Project,
    Records,
    User,
    activity_json,
    activity_type_json,
    note_has_key,
    utc,
)
from maillink.sandbox.pipedrive.limits import check_burst, seconds_to_utc_midnight
from maillink.sandbox.pipedrive.query import ApiError
from maillink.sandbox.pipedrive.views import TOKEN_COSTS, V2_QUERY_PARAMS, PipedriveViews
from maillink.sandbox.pipedrive.webhooks import SandboxWebhooks

_ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."


@dataclass(frozen=True)
class ReceivedRequest:
    """A request the sandbox admitted, kept so that tests can check what clients send."""

    operation: str
    method: str
    path: str
    query: dict[str, str]
    body: Any


class PipedriveSandbox:
    """A Pipedrive company on 127.0.0.1, seeded through `add_*` and inspected through `activities()`.

    `burst_per_2s` limits requests per token in a rolling 2-second window (and
    `search_burst_per_2s` the search API); `daily_token_budget` is the company's token budget,
    charged per call by `TOKEN_COSTS`.
    """

    def __init__(
        self,
        *,
        api_token: str = "sandbox-token",
        oauth_token: str = "sandbox-oauth-token",
        daily_token_budget: int | None = None,
        burst_per_2s: int | None = None,
        search_burst_per_2s: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.api_token = api_token
        self.oauth_token = oauth_token
        self.daily_token_budget = daily_token_budget
        self.burst_per_2s = burst_per_2s
        self.search_burst_per_2s = search_burst_per_2s
        self.clock = clock or (lambda: datetime.now(UTC))
        self.records = Records()
        self.webhooks = self.records.webhooks = SandboxWebhooks(self.clock)
        self.faults = FaultPlan()
        self.meter = Meter()
        self.received: deque[ReceivedRequest] = deque(maxlen=5000)
        self.tokens_spent_today = 0
        self._limits_lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self.lost = LostResponses()  # answers lost on the way (`lose_next_response`)
        self._before = UserActions()  # users' actions due before a request (`before_next`)
        self.activity_types = [
            activity_type_json(i, name, key)
            for i, (name, key) in enumerate(DEFAULT_ACTIVITY_TYPES, start=1)
        ]
        self.views = PipedriveViews(self.records, self.activity_types, self.clock)
        self.app = self._build_app()
        install_faults(self.app, self.faults, self.meter)
        self._wrap_outermost()
        self._server = ServerThread(self.app)
        self.url = self._server.url

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PipedriveSandbox:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
        self.webhooks.stop()

    def __enter__(self) -> PipedriveSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- seeding -----------------------------------------------------------------------------

    def add_person(self, name: str, emails: list[str], *, org_id: int | None = None) -> int:
        with self.records.lock:
            now = self.clock()
            pid = self.records.next_id("person")
            self.records.persons[pid] = Person(pid, name, list(emails), now, now, org_id)
            self.webhooks.created(self.records.persons[pid])
            return pid

    def add_organization(self, name: str) -> int:
        with self.records.lock:
            oid = self.records.next_id("organization")
            self.records.organizations[oid] = name
            return oid

    def add_user(self, name: str, email: str, *, active: bool = True) -> int:
        """A user of the company (a rep): activities may name it as their owner. The API
        token's user (id 1) is always there."""
        with self.records.lock:
            uid = self.records.next_id("user")
            self.records.users[uid] = User(uid, name, email, self.clock(), active=active)
            return uid

    def merge_persons(self, person_id: int, merge_with_id: int, at: datetime | None = None) -> None:
        """Merge `person_id` into `merge_with_id` as Pipedrive does (the API's PUT
        /api/v1/persons/{id}/merge does the same): the first is gone afterwards."""
        self.records.merge_persons(person_id, merge_with_id, at or self.clock())

    def delete_activity(self, activity_id: int) -> None:
        """Delete the activity as a user does: the API no longer shows or updates it."""
        with self.records.lock:
            self.records.activities[activity_id]["is_deleted"] = True

    def delete_lead(self, lead_id: str) -> None:
        """Delete the lead: Pipedrive keeps no trace of a deleted lead."""
        with self.records.lock:
            before = self.webhooks.before(self.records.leads[lead_id])
            del self.records.leads[lead_id]
            self.webhooks.after(before, None)

    def update_person(self, person_id: int, *, emails: list[str], at: datetime) -> None:
        with self.records.lock:
            person = self.records.persons[person_id]
            before = self.webhooks.before(person)
            person.emails = list(emails)
            person.update_time = utc(at)
            self.webhooks.after(before, person)

    def add_deal(
        self,
        title: str,
        person_id: int,
        *,
        add_time: datetime,
        status: str = "open",
        close_time: datetime | None = None,
    ) -> int:
        """A deal; a won or lost one needs `close_time` (its won_time / lost_time)."""
        if status not in ("open", "won", "lost"):
            raise ValueError(f"status {status!r}: use open, won or lost (then set_deal_status)")
        if status != "open" and close_time is None:
            raise ValueError(f"a {status} deal needs its close_time")
        with self.records.lock:
            did = self.records.next_id("deal")
            deal = Deal(did, title, person_id, utc(add_time), utc(close_time or add_time))
            self.records.deals[did] = deal
            if close_time is not None and status != "open":
                self._close_deal(deal, status, utc(close_time))
            self.webhooks.created(deal)
            return did

    def set_deal_status(self, deal_id: int, status: str, at: datetime) -> None:
        """Win, lose, reopen or delete the deal at `at` (its update_time moves to `at`)."""
        with self.records.lock:
            deal = self.records.deals[deal_id]
            before = self.webhooks.before(deal)
            at = utc(at)
            if status == "deleted":
                deal.deleted_at = at
            elif status in ("won", "lost"):
                self._close_deal(deal, status, at)
            elif status == "open":
                deal.status, deal.deleted_at = "open", None
                deal.won_time = deal.lost_time = deal.close_time = None
            else:
                raise ValueError(f"status {status!r}: use open, won, lost or deleted")
            deal.update_time = at
            self.webhooks.after(before, deal)

    def archive_deal(self, deal_id: int, at: datetime) -> None:
        with self.records.lock:
            deal = self.records.deals[deal_id]
            before = self.webhooks.before(deal)
            deal.archive_time = deal.update_time = utc(at)
            self.webhooks.after(before, deal)

    @staticmethod
    def _close_deal(deal: Deal, status: str, at: datetime) -> None:
        deal.status, deal.close_time = status, at
        deal.won_time = at if status == "won" else None
        deal.lost_time = at if status == "lost" else None

    def add_lead(
        self,
        title: str,
        person_id: int,
        *,
        add_time: datetime,
        archived: bool = False,
        archived_at: datetime | None = None,
    ) -> str:
        with self.records.lock:
            lid = self.records.new_lead_id()
            lead = Lead(lid, title, person_id, utc(add_time), utc(add_time))
            self.records.leads[lid] = lead
            if archived or archived_at is not None:
                lead.archive_time = lead.update_time = utc(archived_at or add_time)
            self.webhooks.created(lead)
            return lid

    def archive_lead(self, lead_id: str, at: datetime) -> None:
        with self.records.lock:
            lead = self.records.leads[lead_id]
            before = self.webhooks.before(lead)
            lead.archive_time = lead.update_time = utc(at)
            self.webhooks.after(before, lead)

    def add_project(
        self,
        title: str,
        person_id: int,
        *,
        add_time: datetime,
        status: str = "open",
        closed_at: datetime | None = None,
        end_date: date | None = None,
        archived_at: datetime | None = None,
    ) -> int:
        """A project; `closed_at` is when a completed, canceled or deleted one changed status."""
        if status not in PROJECT_STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(PROJECT_STATUSES)}")
        with self.records.lock:
            pid = self.records.next_id("project")
            changed = utc(closed_at or add_time)
            project = Project(pid, title, person_id, utc(add_time), changed, status, changed)
            project.end_date = end_date
            if archived_at is not None:
                project.archive_time = project.update_time = utc(archived_at)
            self.records.projects[pid] = project
            self.webhooks.created(project)
            return pid

    def set_project_status(self, project_id: int, status: str, at: datetime) -> None:
        if status not in PROJECT_STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(PROJECT_STATUSES)}")
        with self.records.lock:
            project = self.records.projects[project_id]
            before = self.webhooks.before(project)
            project.status = status
            project.status_change_time = project.update_time = utc(at)
            self.webhooks.after(before, project)

    # -- inspection and faults ---------------------------------------------------------------

    def activities(self) -> list[dict[str, Any]]:
        """Every activity as stored, oldest first (deleted ones included, with is_deleted)."""
        with self.records.lock:
            return [activity_json(a, attendees=True) for a in self.records.activities.values()]

    def activities_with_key(self, key: str) -> list[dict[str, Any]]:
        """The activities whose note has the line `maillink-id: <key>`."""
        return [a for a in self.activities() if note_has_key(a.get("note"), key)]

    def lose_next_response(
        self, path_regex: str, method: str | None = "POST", times: int = 1
    ) -> None:
        """The next matching request is carried out, then its connection is reset unanswered."""
        self.lost.add(path_regex, method, times)

    def before_next(
        self,
        path_regex: str,
        action: Callable[[], object],
        method: str | None = "POST",
        times: int = 1,
    ) -> None:
        """Run `action` (a user acting in Pipedrive: deleting a deal, merging persons) just
        before the next matching request is served: what happens between a client's decision
        and its write."""
        self._before.add(path_regex, action, method, times)

    def reset_daily_budget(self) -> None:
        with self._limits_lock:
            self.tokens_spent_today = 0

    def reset(self) -> None:
        """Forget every record, fault, lost response, count and limit window (keeps the settings)."""
        self.records.clear()
        self.webhooks.clear()
        self.faults.clear()
        self.meter.reset()
        self.received.clear()
        self.lost.clear()
        self._before.clear()
        with self._limits_lock:
            self._windows.clear()
            self.tokens_spent_today = 0

    # -- HTTP --------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        for rule, operation, view, method in self.views.routes():
            app.add_url_rule(rule, operation, view, methods=[method])
        for rule, operation, view, method in admin_routes(self.records, self.clock):
            app.add_url_rule(rule, operation, view, methods=[method])
        for rule, operation, view, method in self.webhooks.routes():
            app.add_url_rule(rule, operation, view, methods=[method])
        app.before_request(self._admit)
        app.after_request(self._rate_headers)
        app.register_error_handler(ApiError, self._error_response)
        app.register_error_handler(404, lambda e: self._error_response(ApiError(404, "Not found")))
        app.register_error_handler(
            405, lambda e: self._error_response(ApiError(405, "Method not allowed"))
        )
        return app

    def _wrap_outermost(self) -> None:
        """Count every HTTP request, and lose the responses `lose_next_response` asked for."""
        inner = self.app.wsgi_app

        def outermost(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.meter.count("http")
            self._before.run_due(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
            return self.lost.serve(inner, environ, start_response)

        self.app.wsgi_app = outermost  # type: ignore[method-assign]

    def _admit(self) -> None:
        """Authenticate, apply the burst limit and the daily budget, charge the call, log it,
        and refuse query parameters v2 does not know (an admitted call costs its tokens)."""
        operation = request.endpoint
        cost = TOKEN_COSTS.get(operation or "", ADMIN_COSTS.get(operation or ""))
        if operation is None or cost is None:
            return
        if not self._authenticated():
            raise ApiError(401, "unauthorized access")
        self._check_limits(operation)
        self.meter.count(operation, cost)
        body = request.get_json(silent=True) if request.method in ("POST", "PATCH", "PUT") else None
        query = {k: v for k, v in request.args.items() if k != "api_token"}
        self.received.append(ReceivedRequest(operation, request.method, request.path, query, body))
        allowed = V2_QUERY_PARAMS.get(operation)
        unknown = sorted(set(query) - allowed) if allowed is not None else []
        if unknown:
            raise ApiError(400, f'Parameter "{unknown[0]}" is not allowed for this request')

    def _authenticated(self) -> bool:
        token = request.headers.get("x-api-token") or request.args.get("api_token")
        if token is not None:
            return token == self.api_token
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bearer == self.oauth_token

    def _check_limits(self, operation: str) -> None:
        """The burst limits, then the daily token budget (each a 429 when spent); the call joins
        the burst windows only once all of them let it through."""
        now = time.monotonic()
        token = request.headers.get("x-api-token") or request.headers.get("Authorization", "")
        with self._limits_lock:
            headers: dict[str, str] = {}
            limits = [("all", self.burst_per_2s)]
            if operation == "persons.search":
                limits.append(("search", self.search_burst_per_2s))
            admitted = []
            for scope, limit in limits:
                if limit is None:
                    continue
                window = self._windows.setdefault(f"{scope}:{token}", deque())
                check_burst(window, limit, now, headers)
                admitted.append(window)
            self._charge_budget(operation, headers)
            for window in admitted:
                window.append(now)
            g.rate_headers = headers

    def _charge_budget(self, operation: str, headers: dict[str, str]) -> None:
        """Spend the call's tokens from today's budget, or refuse it until UTC midnight."""
        if self.daily_token_budget is None:
            return
        left = self.daily_token_budget - self.tokens_spent_today
        headers["x-daily-ratelimit-token-limit"] = str(self.daily_token_budget)
        headers["x-daily-ratelimit-token-remaining"] = "0"
        if left <= 0:
            headers["Retry-After"] = str(seconds_to_utc_midnight())
            raise ApiError(429, "Daily API token budget exceeded", headers)
        self.tokens_spent_today += TOKEN_COSTS.get(operation, ADMIN_COSTS.get(operation, 0))
        left = self.daily_token_budget - self.tokens_spent_today
        headers["x-daily-ratelimit-token-remaining"] = str(max(0, left))

    def _rate_headers(self, response: Response) -> Response:
        for name, value in getattr(g, "rate_headers", {}).items():
            response.headers.setdefault(name, value)
        return response

    def _error_response(self, error: ApiError) -> Response:
        body = {
            "success": False,
            "error": error.message,
            "error_info": _ERROR_INFO,
            "data": None,
            "additional_data": None,
        }
        response = jsonify(body)
        response.status_code = error.status
        for name, value in error.headers.items():
            response.headers[name] = value
        return response


__all__ = ["ADMIN_COSTS", "TOKEN_COSTS", "ApiError", "PipedriveSandbox", "ReceivedRequest"]
