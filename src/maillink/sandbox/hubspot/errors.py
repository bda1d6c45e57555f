"""HubSpot's error answers: the v3 `Error` body (category, message, correlationId, and the
`"status": "error"` HubSpot adds), the 429 body of the rate limits, and the per-input
`StandardError` entries of a 207 multi-status batch answer."""

from __future__ import annotations

import json
import uuid
from typing import Any

# HubSpot's 429 policies (the `policyName` of the body says which limit was hit).
TEN_SECONDLY_ROLLING = "TEN_SECONDLY_ROLLING"
SECONDLY = "SECONDLY"  # the search endpoints' own limit
DAILY = "DAILY"


class ApiError(Exception):
    """An error answer: `status` with HubSpot's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str = "VALIDATION_ERROR",
        *,
        context: dict[str, list[str]] | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        sub_category: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category
        self.context = context
        self.errors = errors
        self.headers = headers or {}
        self.sub_category = sub_category

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "error",
            "message": self.message,
            "correlationId": str(uuid.uuid4()),
            "category": self.category,
        }
        if self.sub_category:
            body["subCategory"] = self.sub_category
        if self.context:
            body["context"] = self.context
        if self.errors:
            body["errors"] = self.errors
        return body


class RateLimited(ApiError):
    """A 429: its body is the rate-limit shape, not the `Error` one."""

    def __init__(self, policy: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(429, message, "RATE_LIMITS", headers=headers)
        self.policy = policy

    def body(self) -> dict[str, Any]:
        return {
            "status": "error",
            "message": self.message,
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": self.policy,
            "requestId": str(uuid.uuid4()),
        }


def unauthenticated() -> ApiError:
    return ApiError(
        401,
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
        "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        "INVALID_AUTHENTICATION",
    )


def expired_token() -> ApiError:
    return ApiError(
        401,
        "The OAuth token used to make this call expired. Refresh the token and try again.",
        "EXPIRED_AUTHENTICATION",
    )


def invalid_properties(problems: list[tuple[str, str, str]]) -> ApiError:
    """400 for property values HubSpot refuses: (name, error code, message) each."""
    details = [
        {"isValid": False, "message": message, "error": code, "name": name}
        for name, code, message in problems
    ]
    return ApiError(
        400,
        f"Property values were not valid: {json.dumps(details)}",
        errors=[
            {"message": message, "code": code, "context": {"propertyName": [name]}}
            for name, code, message in problems
        ],
    )


def not_found(kind: str, ids: list[str]) -> dict[str, Any]:
    """The StandardError of a 207 batch answer for inputs the account does not have."""
    return {
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": f"Could not get some {kind} objects, they may be deleted or not exist. "
        "Check that ids are valid.",
        "context": {"ids": ids},
        "errors": [],
        "links": {},
    }
