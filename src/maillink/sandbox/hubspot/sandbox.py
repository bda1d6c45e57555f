"""A local, stateful HubSpot account on 127.0.0.1: the CRM v3 objects, v4 associations,
owners, pipelines, properties (`properties`) and OAuth, answering in the shapes of HubSpot's
OpenAPI specs.

It checks the bearer token as HubSpot does (a private app's access token, or an OAuth access
token of its public app), applies HubSpot's rate limits (see `limits`), and fails on demand:
injected faults (429, 5xx, resets) and lost responses (the write is done, the answer never
arrives). `admin` holds the controls tests and seeding use; `webhooks` the app's subscriptions
and the signed events it sends on demand.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request

from maillink.sandbox._server import (
    Fault,
    FaultPlan,
    LostResponses,
    Meter,
    ServerThread,
    UserActions,
    install_faults,
)
from maillink.sandbox.hubspot import scopes
from maillink.sandbox.hubspot.account import AccountViews
from maillink.sandbox.hubspot.admin import Admin
from maillink.sandbox.hubspot.associations import AssociationViews
from maillink.sandbox.hubspot.batch import BatchViews
from maillink.sandbox.hubspot.errors import (
    DAILY,
    TEN_SECONDLY_ROLLING,
    ApiError,
    RateLimited,
    unauthenticated,
)
from maillink.sandbox.hubspot.limits import Limits
from maillink.sandbox.hubspot.oauth import OAuthState
from maillink.sandbox.hubspot.objects import ObjectViews
from maillink.sandbox.hubspot.properties import PropertyViews
from maillink.sandbox.hubspot.records import MAILLINK_KEY, Records
from maillink.sandbox.hubspot.webhooks import Webhooks

SEARCH_OPERATIONS = {"objects.search"}


@dataclass(frozen=True)
class ReceivedRequest:
    """A request the sandbox admitted, kept so that tests can check what clients send."""

    operation: str
    method: str
    path: str
    query: dict[str, str]
    body: Any


class HubSpotSandbox(Admin):
    """A HubSpot account, seeded through the `Admin` methods (`add_contact`, `add_deal`…).

    Limits are off unless set: `burst_per_10s`, `daily_limit` (private app only, as HubSpot)
    and `search_per_second` (HubSpot's values are in `maillink.sandbox.hubspot.limits`).
    """

    def __init__(
        self,
        *,
        access_token: str = "sandbox-hubspot-private-app-token",
        client_id: str = "sandbox-hubspot-client-id",
        client_secret: str = "sandbox-hubspot-client-secret",
        burst_per_10s: int | None = None,
        daily_limit: int | None = None,
        search_per_second: int | None = None,
        clock: Callable[[], datetime] | None = None,
        private_app_scopes: frozenset[str] = scopes.ALL_SCOPES,
        maillink_key_property: bool = True,
        maillink_key_unique: bool = True,
    ):
        self.access_token = access_token
        self.private_app_scopes = private_app_scopes
        self.clock = clock or (lambda: datetime.now(UTC))
        self.records = Records()
        super().__init__(self.records, self.clock)
        self.limits = Limits(burst_per_10s, daily_limit, search_per_second)
        self.oauth = OAuthState(client_id, client_secret, self.admin_user_id, self.clock)
        self.faults = FaultPlan()
        self.meter = Meter()
        self.received: deque[ReceivedRequest] = deque(maxlen=5000)
        self.lost = LostResponses()  # answers lost on the way (`lose_next_response`)
        self._before = UserActions()  # users' actions due before a request (`before_next`)
        self.maillink_key_property = maillink_key_property
        self.maillink_key_unique = maillink_key_unique  # False: defined without unique values
        self.webhooks = Webhooks(client_secret, self.clock)
        self.records.on_change = self.webhooks.record
        self._define_custom_properties()
        self.app = self._build_app()
        install_faults(self.app, self.faults, self.meter)
        self._wrap_outermost()
        self._server = ServerThread(self.app)
        self.url = self._server.url

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HubSpotSandbox:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> HubSpotSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def client_id(self) -> str:
        return self.oauth.client_id

    @property
    def client_secret(self) -> str:
        return self.oauth.client_secret

    # -- faults and state --------------------------------------------------------------------

    def lose_next_response(
        self, path_regex: str, method: str | None = "POST", times: int = 1
    ) -> None:
        """The next matching request is carried out, then its connection is reset unanswered:
        a batch create whose outcome the client cannot know."""
        self.lost.add(path_regex, method, times)

    def before_next(
        self,
        path_regex: str,
        action: Callable[[], object],
        method: str | None = "POST",
        times: int = 1,
    ) -> None:
        """Run `action` (a user acting in HubSpot: archiving a deal, merging contacts) just
        before the next matching request is served: what happens between a client's decision
        and its write. The action may call the sandbox's API itself."""
        self._before.add(path_regex, action, method, times)

    def inject_rate_limit(
        self, path_regex: str, policy: str = TEN_SECONDLY_ROLLING, times: int = 1
    ) -> Fault:
        """The next `times` matching requests get HubSpot's 429 of that policy (with the burst
        headers for TEN_SECONDLY_ROLLING), whatever the limits in force."""
        headers = {}
        if policy == TEN_SECONDLY_ROLLING:
            headers = {
                "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
                "X-HubSpot-RateLimit-Max": str(self.limits.burst_per_10s or 100),
                "X-HubSpot-RateLimit-Remaining": "0",
            }
        limit = {TEN_SECONDLY_ROLLING: "ten_secondly_rolling", DAILY: "daily"}.get(
            policy, "secondly"
        )
        body = RateLimited(policy, f"You have reached your {limit} limit.").body()
        fault = Fault(path_regex, 429, json.dumps(body), headers, times=times)
        return self.faults.add(fault)

    def inject_server_error(self, path_regex: str, status: int = 502, times: int = 1) -> Fault:
        """The next `times` matching requests fail with a 5xx in HubSpot's error shape."""
        body = ApiError(status, "internal error", "INTERNAL_ERROR").body()
        return self.faults.add(
            Fault(path=path_regex, status=status, body=json.dumps(body), times=times)
        )

    def reset(self) -> None:
        """Forget every record, owner, fault, lost response, count and limit window (keeps the
        settings and the OAuth app; issued tokens stay valid)."""
        self.records.clear()
        self.records.search_lag = False
        self._define_custom_properties()
        self.properties.clear()
        self.faults.clear()
        self.meter.reset()
        self.received.clear()
        self.limits.reset()
        self.webhooks.clear()
        self.lost.clear()
        self._before.clear()

    def _define_custom_properties(self) -> None:
        """The account's custom email property for maillink's keys, unless told it has none
        (`maillink_key_unique`: with unique values or not)."""
        self.records.custom.clear()
        if self.maillink_key_property:
            self.define_property("emails", MAILLINK_KEY, unique=self.maillink_key_unique)

    # -- HTTP --------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        objects = ObjectViews(self.records, self.clock)
        self.properties = PropertyViews(self.records, self.clock, lambda: self._caller()[2])
        views = [
            *BatchViews(self.records, self.clock, objects).routes(),
            *objects.routes(),
            *AssociationViews(self.records, self.clock).routes(),
            *AccountViews(self.records, self.clock).routes(),
            *self.properties.routes(),
            *self.oauth.routes(),
        ]
        for rule, operation, view, method in views:
            app.add_url_rule(rule, operation, view, methods=[method])
        app.before_request(self._admit)
        app.after_request(self._rate_headers)
        app.register_error_handler(ApiError, self._error_response)
        app.register_error_handler(
            404, lambda e: self._error_response(ApiError(404, "Not found", "OBJECT_NOT_FOUND"))
        )
        app.register_error_handler(
            405, lambda e: self._error_response(ApiError(405, "Method not allowed"))
        )
        return app

    def _admit(self) -> None:
        """Authenticate, apply the rate limits, count and log the call."""
        operation = request.endpoint
        if operation is None:
            return
        if operation.startswith("oauth."):
            self.meter.count(operation)
            return
        app, private, granted = self._caller()
        search = operation in SEARCH_OPERATIONS
        g.rate_headers = self.limits.admit(
            app, search=search, private=private, now=time.monotonic()
        )
        scopes.check(operation, request.view_args or {}, granted)
        self.meter.count(operation)
        body = request.get_json(silent=True) if request.method in ("POST", "PATCH") else None
        query = dict(request.args.items())
        self.received.append(ReceivedRequest(operation, request.method, request.path, query, body))

    def _caller(self) -> tuple[str, bool, frozenset[str]]:
        """(the app whose limits the call counts against, whether it is a private app, the
        token's scopes)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated()
        if token == self.access_token:
            return "private-app", True, self.private_app_scopes
        granted = self.oauth.check_bearer(token)
        if granted is None:
            raise unauthenticated()
        return f"public-app:{self.oauth.client_id}", False, granted

    def _rate_headers(self, response: Response) -> Response:
        for name, value in getattr(g, "rate_headers", {}).items():
            response.headers.setdefault(name, value)
        return response

    def _error_response(self, error: ApiError) -> Response:
        response = jsonify(error.body())
        response.status_code = error.status
        for name, value in error.headers.items():
            response.headers[name] = value
        return response

    def _wrap_outermost(self) -> None:
        """Count every HTTP request, and lose the responses `lose_next_response` asked for."""
        inner = self.app.wsgi_app

        def outermost(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.meter.count("http")
            self._before.run_due(environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return self.lost.serve(inner, environ, start_response)

        self.app.wsgi_app = outermost  # type: ignore[method-assign]
