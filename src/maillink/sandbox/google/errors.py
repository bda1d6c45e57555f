"""Google API error answers in Google's JSON shape, and the query-parameter checks that raise them."""

from __future__ import annotations

import json
from collections.abc import Mapping

from flask import Response
from werkzeug.datastructures import MultiDict

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# Parameters every Google API accepts besides a method's own.
SYSTEM_PARAMS = frozenset(
    {
        "alt",
        "fields",
        "key",
        "access_token",
        "oauth_token",
        "prettyPrint",
        "quotaUser",
        "userIp",
        "callback",
        "upload_protocol",
        "uploadType",
        "$.xgafv",
    }
)
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
QUOTA_MESSAGE = (
    "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' of service "
    "'gmail.googleapis.com' for consumer 'project_number:000000000000'."
)


class GoogleApiError(Exception):
    """An error answer: `{"error": {"code", "message", "errors": [...], "status"}}`."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str,
        *,
        domain: str = "global",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, object]:
        detail = {"message": self.message, "domain": self.domain, "reason": self.reason}
        detail.update(self.extra)
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [detail],
                "status": _STATUS_NAMES.get(self.code, "UNKNOWN"),
            }
        }

    def response(self) -> Response:
        return json_response(self.body(), self.code, self.headers)


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """JSON as Google sends it (compact: the client libraries do not care for prettyPrint)."""
    response = Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        content_type="application/json; charset=UTF-8",
    )
    response.headers["Vary"] = "Origin, X-Origin, Referer"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def bad_request(message: str) -> GoogleApiError:
    return GoogleApiError(400, message, "invalidArgument")


def unauthenticated() -> GoogleApiError:
    return GoogleApiError(
        401,
        UNAUTHENTICATED_MESSAGE,
        "authError",
        headers={
            "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        },
        extra={"location": "Authorization", "locationType": "header"},
    )


def forbidden(message: str, reason: str = "forbidden") -> GoogleApiError:
    return GoogleApiError(403, message, reason)


def not_found() -> GoogleApiError:
    return GoogleApiError(404, "Requested entity was not found.", "notFound")


def rate_limited(retry_after: int) -> GoogleApiError:
    return GoogleApiError(
        429,
        QUOTA_MESSAGE,
        "rateLimitExceeded",
        domain="usageLimits",
        headers={"Retry-After": str(retry_after)},
    )


class QueryArgs:
    """A method's query parameters, checked as Google checks them: unknown names are refused."""

    def __init__(self, args: MultiDict[str, str], allowed: frozenset[str]) -> None:
        for name in args:
            if name not in allowed and name not in SYSTEM_PARAMS:
                raise bad_request(
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query '
                    f"parameter. Field '{name}' could not be found in request message."
                )
        alt = args.get("alt", "json")
        if alt != "json":
            raise bad_request(f"Invalid value at 'alt', \"{alt}\"")
        self._args = args

    def __contains__(self, name: str) -> bool:
        return name in self._args

    def string(self, name: str) -> str | None:
        return self._args.get(name)

    def strings(self, name: str) -> list[str]:
        return self._args.getlist(name)

    def integer(self, name: str, default: int, maximum: int) -> int:
        raw = self._args.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(f"Invalid value at '{name}' (TYPE_UINT32), \"{raw}\"") from None
        if value < 1:
            raise bad_request(f"Invalid value at '{name}', {raw}: must be positive")
        return min(value, maximum)

    def uint64(self, name: str) -> int | None:
        raw = self._args.get(name)
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 20:
            raise bad_request(f"Invalid value at '{name}' (TYPE_UINT64), \"{raw}\"")
        return int(raw)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._args.get(name)
        if raw is None:
            return default
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise bad_request(f"Invalid value at '{name}' (TYPE_BOOL), \"{raw}\"")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._args.get(name, default)
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
        raise bad_request(f"Invalid value at '{name}', \"{raw}\"")
