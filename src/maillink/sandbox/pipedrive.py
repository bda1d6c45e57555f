"""A local, stateful Pipedrive: persons, deals, leads, projects, activity types and activities.

It answers the endpoints maillink uses, in the shapes of Pipedrive's OpenAPI specs (v2 cursor
pagination, v1 start/limit), checks the API token like Pipedrive (`x-api-token` header,
`api_token` query parameter, or an OAuth `Authorization: Bearer`), validates activity bodies as
strictly as API v2 does, charges each call its token cost, and fails on demand: the burst limit and
the daily token budget (429s a client can tell apart), injected faults, and lost responses (the
write is done, the answer never arrives).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Flask, Response, g, jsonify, request

from maillink.sandbox._server import FaultPlan, Meter, ServerThread, install_faults
from maillink.sandbox.pipedrive_data import (
    DEAL_STATUSES,
    DEFAULT_ACTIVITY_TYPES,
    LINK_FIELDS,
    PROJECT_STATUSES,
    Deal,
    InvalidBody,
    Lead,
    Person,
    Project,
    Records,
    activity_json,
    activity_type_json,
    check_activity_body,
    deal_json,
    lead_json,
    note_has_key,
    one_link,
    person_json,
    person_search_json,
    project_json,
    utc,
    v2_time,
)

# Operation name -> token cost (the specs' x-token-cost). The tests hold it against the specs.
TOKEN_COSTS: dict[str, int] = {
    "persons.search": 20,
    "persons.list": 10,
    "persons.get": 1,
    "deals.list": 10,
    "deals.archived": 20,
    "deals.get": 1,
    "leads.list": 20,
    "leads.archived": 40,
    "projects.list": 20,
    "activityTypes.list": 20,
    "activities.list": 10,
    "activities.get": 1,
    "activities.create": 5,
    "activities.update": 5,
}

# Query parameters each v2 operation accepts (v2 refuses others); v1 ignores unknown ones.
_V2_LIST = {"filter_id", "ids", "owner_id", "updated_since", "updated_until", "sort_by"}
_V2_LIST |= {"sort_direction", "include_fields", "limit", "cursor"}
V2_QUERY_PARAMS: dict[str, frozenset[str]] = {
    "persons.search": frozenset(
        {"term", "fields", "exact_match", "organization_id", "include_fields", "limit", "cursor"}
    ),
    "persons.list": frozenset(_V2_LIST | {"org_id", "custom_fields"}),
    "persons.get": frozenset({"include_fields", "custom_fields"}),
    "deals.list": frozenset(_V2_LIST | {"person_id", "org_id", "pipeline_id", "stage_id"})
    | {"status", "custom_fields"},
    "deals.get": frozenset({"include_fields", "custom_fields"}),
    "activities.list": frozenset(_V2_LIST | {"deal_id", "lead_id", "person_id", "org_id", "done"}),
    "activities.get": frozenset({"include_fields"}),
    "activities.create": frozenset(),
    "activities.update": frozenset(),
}
V2_QUERY_PARAMS["deals.archived"] = V2_QUERY_PARAMS["deals.list"]

BURST_WINDOW = 2.0  # seconds: Pipedrive's rolling burst window
_ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
_DELETED_DEALS_KEPT = timedelta(days=30)


class ApiError(Exception):
    """An error answer in Pipedrive's shape."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ReceivedRequest:
    """A request the sandbox admitted, kept so that tests can check what clients send."""

    operation: str
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _LostResponse:
    path: re.Pattern[str]
    method: str | None
    times: int


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
        self.faults = FaultPlan()
        self.meter = Meter()
        self.received: deque[ReceivedRequest] = deque(maxlen=5000)
        self.tokens_spent_today = 0
        self._limits_lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._lost: list[_LostResponse] = []
        self.activity_types = [
            activity_type_json(i, name, key)
            for i, (name, key) in enumerate(DEFAULT_ACTIVITY_TYPES, start=1)
        ]
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

    def __enter__(self) -> PipedriveSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- seeding -----------------------------------------------------------------------------

    def add_person(self, name: str, emails: list[str]) -> int:
        with self.records.lock:
            now = self.clock()
            pid = self.records.next_id("person")
            self.records.persons[pid] = Person(pid, name, list(emails), now, now)
            return pid

    def update_person(self, person_id: int, *, emails: list[str], at: datetime) -> None:
        with self.records.lock:
            person = self.records.persons[person_id]
            person.emails = list(emails)
            person.update_time = utc(at)

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
            return did

    def set_deal_status(self, deal_id: int, status: str, at: datetime) -> None:
        """Win, lose, reopen or delete the deal at `at` (its update_time moves to `at`)."""
        with self.records.lock:
            deal = self.records.deals[deal_id]
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

    def archive_deal(self, deal_id: int, at: datetime) -> None:
        with self.records.lock:
            deal = self.records.deals[deal_id]
            deal.archive_time = deal.update_time = utc(at)

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
            return lid

    def archive_lead(self, lead_id: str, at: datetime) -> None:
        with self.records.lock:
            lead = self.records.leads[lead_id]
            lead.archive_time = lead.update_time = utc(at)

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
            return pid

    def set_project_status(self, project_id: int, status: str, at: datetime) -> None:
        if status not in PROJECT_STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(PROJECT_STATUSES)}")
        with self.records.lock:
            project = self.records.projects[project_id]
            project.status = status
            project.status_change_time = project.update_time = utc(at)

    # -- inspection and faults ---------------------------------------------------------------

    def activities(self) -> list[dict[str, Any]]:
        """Every activity as stored, oldest first (deleted ones included, with is_deleted)."""
        with self.records.lock:
            return [activity_json(a, attendees=True) for a in self.records.activities.values()]

    def activities_with_key(self, key: str) -> list[dict[str, Any]]:
        """The activities whose note has the line `maillink-id: <key>`."""
        return [a for a in self.activities() if note_has_key(a.get("note"), key)]

    def lose_next_response(self, path_regex: str, method: str | None = "POST", times: int = 1) -> None:
        """The next matching request is carried out, then its connection is reset unanswered."""
        with self._limits_lock:
            self._lost.append(_LostResponse(re.compile(path_regex), method, times))

    def reset_daily_budget(self) -> None:
        with self._limits_lock:
            self.tokens_spent_today = 0

    # -- HTTP --------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        routes: list[tuple[str, str, Callable[..., Any], list[str]]] = [
            ("/api/v2/persons/search", "persons.search", self._persons_search, ["GET"]),
            ("/api/v2/persons", "persons.list", self._persons_list, ["GET"]),
            ("/api/v2/persons/<int:person_id>", "persons.get", self._persons_get, ["GET"]),
            ("/api/v2/deals", "deals.list", self._deals_list, ["GET"]),
            ("/api/v2/deals/archived", "deals.archived", self._deals_archived, ["GET"]),
            ("/api/v2/deals/<int:deal_id>", "deals.get", self._deals_get, ["GET"]),
            ("/api/v1/leads", "leads.list", self._leads_list, ["GET"]),
            ("/api/v1/leads/archived", "leads.archived", self._leads_archived, ["GET"]),
            ("/api/v1/projects", "projects.list", self._projects_list, ["GET"]),
            ("/api/v1/activityTypes", "activityTypes.list", self._activity_types, ["GET"]),
            ("/api/v2/activities", "activities.list", self._activities_list, ["GET"]),
            ("/api/v2/activities", "activities.create", self._activities_create, ["POST"]),
            ("/api/v2/activities/<int:activity_id>", "activities.get", self._activities_get, ["GET"]),
            (
                "/api/v2/activities/<int:activity_id>",
                "activities.update",
                self._activities_update,
                ["PATCH"],
            ),
        ]
        for rule, name, view, methods in routes:
            app.add_url_rule(rule, name, view, methods=methods)
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
            if not self._take_lost(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")):
                return inner(environ, start_response)
            body = inner(environ, lambda *args, **kwargs: (lambda data: None))
            try:
                for _ in body:
                    pass
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError("sandbox: the write was done, its response is lost")

        self.app.wsgi_app = outermost  # type: ignore[method-assign]

    def _take_lost(self, method: str, path: str) -> bool:
        with self._limits_lock:
            for lost in self._lost:
                if lost.times <= 0 or (lost.method and lost.method.upper() != method.upper()):
                    continue
                if lost.path.search(path):
                    lost.times -= 1
                    return True
        return False

    def _admit(self) -> None:
        """Authenticate, apply the burst limit and the daily budget, charge the call, log it."""
        operation = request.endpoint
        if operation not in TOKEN_COSTS:
            return
        if not self._authenticated():
            raise ApiError(401, "unauthorized access")
        self._check_limits(operation)
        allowed = V2_QUERY_PARAMS.get(operation)
        if allowed is not None:
            for name in request.args:
                if name not in allowed and name != "api_token":
                    raise ApiError(400, f'Parameter "{name}" is not allowed for this request')
        self.meter.count(operation, TOKEN_COSTS[operation])
        body = request.get_json(silent=True) if request.method in ("POST", "PATCH") else None
        query = {k: v for k, v in request.args.items() if k != "api_token"}
        self.received.append(ReceivedRequest(operation, request.method, request.path, query, body))

    def _authenticated(self) -> bool:
        token = request.headers.get("x-api-token") or request.args.get("api_token")
        if token is not None:
            return token == self.api_token
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bearer == self.oauth_token

    def _check_limits(self, operation: str) -> None:
        now = time.monotonic()
        token = request.headers.get("x-api-token") or request.headers.get("Authorization", "")
        with self._limits_lock:
            headers: dict[str, str] = {}
            limits = [("all", self.burst_per_2s)]
            if operation == "persons.search":
                limits.append(("search", self.search_burst_per_2s))
            for scope, limit in limits:
                if limit is None:
                    continue
                window = self._windows.setdefault(f"{scope}:{token}", deque())
                while window and window[0] <= now - BURST_WINDOW:
                    window.popleft()
                reset = max(1, math.ceil(BURST_WINDOW - (now - window[0]))) if window else 2
                headers.update(
                    {
                        "x-ratelimit-limit": str(limit),
                        "x-ratelimit-remaining": str(max(0, limit - len(window) - 1)),
                        "x-ratelimit-reset": str(reset),
                    }
                )
                if len(window) >= limit:
                    headers.update({"x-ratelimit-remaining": "0", "Retry-After": str(reset)})
                    raise ApiError(429, "Request over limit", headers)
            if self.daily_token_budget is not None:
                left = self.daily_token_budget - self.tokens_spent_today
                headers["x-daily-ratelimit-token-limit"] = str(self.daily_token_budget)
                headers["x-daily-ratelimit-token-remaining"] = str(max(0, left))
                if left <= 0:
                    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
                    midnight = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
                    headers["Retry-After"] = str(
                        math.ceil((midnight - datetime.now(UTC)).total_seconds())
                    )
                    raise ApiError(429, "Daily API token budget exceeded", headers)
                self.tokens_spent_today += TOKEN_COSTS[operation]
            for scope, limit in limits:
                if limit is not None:
                    self._windows[f"{scope}:{token}"].append(now)
            g.rate_headers = headers

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

    # -- request parameters ------------------------------------------------------------------

    @staticmethod
    def _int_arg(name: str) -> int | None:
        raw = request.args.get(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, f'"{name}" must be an integer') from None

    @staticmethod
    def _bool_arg(name: str) -> bool | None:
        raw = request.args.get(name)
        if raw is None:
            return None
        if raw.lower() not in ("true", "false"):
            raise ApiError(400, f'"{name}" must be true or false')
        return raw.lower() == "true"

    @staticmethod
    def _time_arg(name: str) -> datetime | None:
        raw = request.args.get(name)
        if not raw:
            return None
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, f'"{name}" must be an RFC 3339 date-time') from None
        if parsed.tzinfo is None:
            raise ApiError(400, f'"{name}" must be an RFC 3339 date-time with a timezone')
        return parsed.astimezone(UTC)

    @staticmethod
    def _choices_arg(name: str, allowed: Iterable[str]) -> list[str]:
        raw = request.args.get(name)
        if not raw:
            return []
        values = [v.strip() for v in raw.split(",") if v.strip()]
        allowed = tuple(allowed)
        for value in values:
            if value not in allowed:
                raise ApiError(400, f'"{name}" must be one of {", ".join(allowed)}')
        return values

    def _limit(self, default: int = 100, maximum: int = 500) -> int:
        limit = self._int_arg("limit")
        if limit is None:
            return default
        if not 1 <= limit <= maximum:
            raise ApiError(400, f'"limit" must be between 1 and {maximum}')
        return limit

    def _cursor_page(self, items: list[Any]) -> tuple[list[Any], str | None]:
        offset = 0
        cursor = request.args.get("cursor")
        if cursor:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise ApiError(400, '"cursor" is invalid') from None
        limit = self._limit()
        end = offset + limit
        next_cursor = None
        if end < len(items):
            next_cursor = base64.urlsafe_b64encode(json.dumps({"offset": end}).encode()).decode()
        return items[offset:end], next_cursor

    def _v2_list(self, items: list[dict[str, Any]]) -> Response:
        page, next_cursor = self._cursor_page(items)
        return jsonify(
            {"success": True, "data": page, "additional_data": {"next_cursor": next_cursor}}
        )

    def _v1_list(self, items: list[dict[str, Any]]) -> Response:
        start = self._int_arg("start") or 0
        limit = min(max(self._int_arg("limit") or 100, 1), 500)
        page = items[start : start + limit]
        more = start + limit < len(items)
        extra = {"start": start, "limit": limit, "more_items_in_collection": more}
        return jsonify({"success": True, "data": page, "additional_data": extra})

    def _sorted(self, items: list[Any], fields: tuple[str, ...], key: Callable[[Any, str], Any]) -> list[Any]:
        sort_by = request.args.get("sort_by", "id")
        direction = request.args.get("sort_direction", "asc")
        if sort_by not in fields:
            raise ApiError(400, f'"sort_by" must be one of {", ".join(fields)}')
        if direction not in ("asc", "desc"):
            raise ApiError(400, '"sort_direction" must be asc or desc')
        return sorted(items, key=lambda item: key(item, sort_by), reverse=direction == "desc")

    def _updated_window(self, update_time: datetime) -> bool:
        since, until = self._time_arg("updated_since"), self._time_arg("updated_until")
        return (since is None or update_time >= since) and (until is None or update_time < until)

    # -- persons -----------------------------------------------------------------------------

    def _persons_search(self) -> Response:
        term = request.args.get("term", "").strip()
        exact = self._bool_arg("exact_match") or False
        fields = self._choices_arg("fields", ("custom_fields", "email", "notes", "phone", "name"))
        fields = fields or ["email", "name"]
        if len(term) < (1 if exact else 2):
            raise ApiError(400, '"term" must be at least 2 characters long (1 with exact_match)')
        wanted = term.lower()

        def matches(value: str) -> bool:
            return value.lower() == wanted if exact else wanted in value.lower()

        with self.records.lock:
            found = [
                person_search_json(person, 1.0 if exact else 0.5)
                for person in self.records.persons.values()
                if ("email" in fields and any(matches(e) for e in person.emails))
                or ("name" in fields and matches(person.name))
            ]
        page, next_cursor = self._cursor_page(found)
        return jsonify(
            {"success": True, "data": {"items": page}, "additional_data": {"next_cursor": next_cursor}}
        )

    def _persons_list(self) -> Response:
        ids = {int(i) for i in request.args.get("ids", "").split(",") if i.strip().isdigit()}
        with self.records.lock:
            persons = [
                p
                for p in self.records.persons.values()
                if self._updated_window(p.update_time) and (not ids or p.id in ids)
            ]
            persons = self._sorted(persons, ("id", "update_time", "add_time"), _attr_key)
            return self._v2_list([person_json(p) for p in persons])

    def _persons_get(self, person_id: int) -> Response:
        with self.records.lock:
            person = self.records.persons.get(person_id)
            if person is None:
                raise ApiError(404, "Person not found")
            return jsonify({"success": True, "data": person_json(person)})

    # -- deals -------------------------------------------------------------------------------

    def _deals_list(self) -> Response:
        return self._deals(archived=False)

    def _deals_archived(self) -> Response:
        return self._deals(archived=True)

    def _deals(self, *, archived: bool) -> Response:
        statuses = self._choices_arg("status", DEAL_STATUSES)
        person_id = self._int_arg("person_id")
        ids = {int(i) for i in request.args.get("ids", "").split(",") if i.strip().isdigit()}
        horizon = self.clock() - _DELETED_DEALS_KEPT
        with self.records.lock:
            deals = []
            for deal in self.records.deals.values():
                if (deal.archive_time is not None) != archived:
                    continue
                if deal.deleted_at is not None:
                    if "deleted" not in statuses or deal.deleted_at < horizon:
                        continue
                elif statuses and deal.status not in statuses:
                    continue
                if person_id is not None and deal.person_id != person_id:
                    continue
                if ids and deal.id not in ids:
                    continue
                if self._updated_window(deal.update_time):
                    deals.append(deal)
            deals = self._sorted(deals, ("id", "update_time", "add_time"), _attr_key)
            return self._v2_list([deal_json(d) for d in deals])

    def _deals_get(self, deal_id: int) -> Response:
        with self.records.lock:
            deal = self.records.deals.get(deal_id)
            if deal is None:
                raise ApiError(404, "Deal not found")
            return jsonify({"success": True, "data": deal_json(deal)})

    # -- leads, projects, activity types (v1) ------------------------------------------------

    def _leads_list(self) -> Response:
        return self._leads(archived=False)

    def _leads_archived(self) -> Response:
        return self._leads(archived=True)

    def _leads(self, *, archived: bool) -> Response:
        person_id = self._int_arg("person_id")
        with self.records.lock:
            leads = sorted(
                (
                    lead
                    for lead in self.records.leads.values()
                    if (lead.archive_time is not None) == archived
                    and (person_id is None or lead.person_id == person_id)
                ),
                key=lambda lead: lead.add_time,
            )
            return self._v1_list([lead_json(lead) for lead in leads])

    def _projects_list(self) -> Response:
        statuses = self._choices_arg("status", PROJECT_STATUSES) or ["open", "completed", "canceled"]
        include_archived = request.args.get("include_archived", "false").lower() in ("true", "1")
        with self.records.lock:
            projects = [
                project_json(p)
                for p in self.records.projects.values()
                if p.status in statuses and (include_archived or p.archive_time is None)
            ]
        return self._v2_list(projects)

    def _activity_types(self) -> Response:
        return jsonify({"success": True, "data": self.activity_types})

    # -- activities --------------------------------------------------------------------------

    def _activities_list(self) -> Response:
        filters = {name: self._int_arg(name) for name in ("person_id", "deal_id", "owner_id")}
        lead_id = request.args.get("lead_id")
        done = self._bool_arg("done")
        ids = {int(i) for i in request.args.get("ids", "").split(",") if i.strip().isdigit()}
        attendees = request.args.get("include_fields") == "attendees"
        with self.records.lock:
            selected = []
            for activity in self.records.activities.values():
                if activity["is_deleted"]:
                    continue
                if any(v is not None and activity.get(k) != v for k, v in filters.items()):
                    continue
                if lead_id is not None and activity.get("lead_id") != lead_id:
                    continue
                if done is not None and activity["done"] != done:
                    continue
                if ids and activity["id"] not in ids:
                    continue
                if self._updated_window(activity["_update_time"]):
                    selected.append(activity)
            fields = ("id", "update_time", "add_time", "due_date")
            selected = self._sorted(selected, fields, _activity_key)
            return self._v2_list([activity_json(a, attendees=attendees) for a in selected])

    def _activities_get(self, activity_id: int) -> Response:
        with self.records.lock:
            activity = self.records.activities.get(activity_id)
            if activity is None or activity["is_deleted"]:
                raise ApiError(404, "Activity not found")
            attendees = request.args.get("include_fields") == "attendees"
            return jsonify({"success": True, "data": activity_json(activity, attendees=attendees)})

    def _activities_create(self) -> Response:
        body = self._activity_body()
        now = self.clock()
        with self.records.lock:
            self._check_references(body)
            aid = self.records.next_id("activity")
            activity: dict[str, Any] = {
                "id": aid,
                "subject": "Call",
                "type": "call",
                "owner_id": 1,
                "creator_user_id": 1,
                "is_deleted": False,
                "add_time": v2_time(now),
                "update_time": v2_time(now),
                "deal_id": None,
                "lead_id": None,
                "person_id": None,
                "org_id": None,
                "project_id": None,
                "due_date": None,
                "due_time": None,
                "duration": None,
                "busy": False,
                "done": False,
                "marked_as_done_time": None,
                "location": None,
                "participants": [],
                "attendees": [],
                "conference_meeting_client": None,
                "conference_meeting_url": None,
                "conference_meeting_id": None,
                "public_description": None,
                "priority": None,
                "note": None,
                "_add_time": now,
                "_update_time": now,
            }
            self._apply(activity, body, now)
            self.records.activities[aid] = activity
            return jsonify({"success": True, "data": activity_json(activity)})

    def _activities_update(self, activity_id: int) -> Response:
        body = self._activity_body()
        now = self.clock()
        with self.records.lock:
            activity = self.records.activities.get(activity_id)
            if activity is None or activity["is_deleted"]:
                raise ApiError(404, "Activity not found")
            self._check_references(body)
            self._apply(activity, body, now)
            activity["update_time"], activity["_update_time"] = v2_time(now), now
            return jsonify({"success": True, "data": activity_json(activity)})

    def _activity_body(self) -> dict[str, Any]:
        try:
            return check_activity_body(request.get_json(silent=True))
        except InvalidBody as exc:
            raise ApiError(400, str(exc)) from None

    def _check_references(self, body: dict[str, Any]) -> None:
        records = self.records
        known = {
            "deal_id": lambda v: v in records.deals and records.deals[v].deleted_at is None,
            "lead_id": lambda v: v in records.leads,
            "project_id": lambda v: v in records.projects,
            "person_id": lambda v: v in records.persons,
        }
        for name, exists in known.items():
            value = body.get(name)
            if value is not None and not exists(value):
                raise ApiError(400, f"{name} {value} does not exist")
        for participant in body.get("participants", []):
            if participant["person_id"] not in records.persons:
                raise ApiError(400, f"person_id {participant['person_id']} does not exist")
        if "type" in body and body["type"] not in {t["key_string"] for t in self.activity_types}:
            raise ApiError(400, f"type {body['type']!r} is not an activity type of this company")

    @staticmethod
    def _apply(activity: dict[str, Any], body: dict[str, Any], now: datetime) -> None:
        """Merge a POST/PATCH body into the activity, as Pipedrive does."""
        if body.get("done") and not activity["done"]:
            activity["marked_as_done_time"] = v2_time(now)
        elif body.get("done") is False:
            activity["marked_as_done_time"] = None
        participants = body.get("participants")
        for name, value in body.items():
            activity[name] = value
        if participants is not None:
            primary = next((p for p in participants if p.get("primary")), None)
            primary = primary or (participants[0] if participants else None)
            activity["participants"] = [
                {"person_id": p["person_id"], "primary": p is primary} for p in participants
            ]
            if "person_id" not in body:
                activity["person_id"] = primary["person_id"] if primary else None
        elif "person_id" in body:
            pid = body["person_id"]
            activity["participants"] = [] if pid is None else [{"person_id": pid, "primary": True}]
        one_link(activity)


def _attr_key(record: Any, field: str) -> tuple[Any, int]:
    return (getattr(record, field), record.id)


def _activity_key(activity: dict[str, Any], field: str) -> tuple[Any, ...]:
    if field == "add_time":
        return (activity["_add_time"], activity["id"])
    if field == "update_time":
        return (activity["_update_time"], activity["id"])
    if field == "due_date":
        return (activity["due_date"] or "", activity["due_time"] or "", activity["id"])
    return (activity["id"],)


__all__ = ["LINK_FIELDS", "TOKEN_COSTS", "ApiError", "PipedriveSandbox", "ReceivedRequest"]
