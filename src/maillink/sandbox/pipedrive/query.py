"""How the Pipedrive sandbox reads query parameters and pages lists, as Pipedrive does.

API v2 is strict (booleans are `true`/`false`, numbers are numbers, limit at most 500, opaque
cursors in `additional_data.next_cursor`); v1 leads page with `start`/`limit` and
`additional_data.more_items_in_collection`. Errors are `ApiError`s, answered in Pipedrive's shape.
Call these while a Flask request is being handled.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Response, jsonify, request


class ApiError(Exception):
    """An error answer in Pipedrive's shape: `{success: false, error, error_info, data, ...}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f'"{name}" must be an integer') from None


def bool_arg(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise ApiError(400, f'"{name}" must be true or false')
    return raw.lower() == "true"


def ids_arg() -> set[int]:
    return {int(i) for i in request.args.get("ids", "").split(",") if i.strip().isdigit()}


def time_arg(name: str) -> datetime | None:
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


def choices_arg(name: str, allowed: Iterable[str]) -> list[str]:
    """A comma-separated list whose every value is one of `allowed`."""
    raw = request.args.get(name)
    if not raw:
        return []
    values = [v.strip() for v in raw.split(",") if v.strip()]
    choices = tuple(allowed)
    for value in values:
        if value not in choices:
            raise ApiError(400, f'"{name}" must be one of {", ".join(choices)}')
    return values


def updated_between(update_time: datetime) -> bool:
    """`updated_since` <= update_time < `updated_until`, each when given."""
    since, until = time_arg("updated_since"), time_arg("updated_until")
    return (since is None or update_time >= since) and (until is None or update_time < until)


def sort_as_asked(
    items: list[Any], fields: tuple[str, ...], key: Callable[[Any, str], Any]
) -> list[Any]:
    """Sort by `sort_by` (one of `fields`, default id) in `sort_direction` (default asc)."""
    sort_by = request.args.get("sort_by", "id")
    direction = request.args.get("sort_direction", "asc")
    if sort_by not in fields:
        raise ApiError(400, f'"sort_by" must be one of {", ".join(fields)}')
    if direction not in ("asc", "desc"):
        raise ApiError(400, '"sort_direction" must be asc or desc')
    return sorted(items, key=lambda item: key(item, sort_by), reverse=direction == "desc")


def _limit(default: int = 100, maximum: int = 500) -> int:
    limit = int_arg("limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise ApiError(400, f'"limit" must be between 1 and {maximum}')
    return limit


def cursor_page(items: list[Any]) -> tuple[list[Any], str | None]:
    """The page `cursor` and `limit` ask for, and the cursor of the next page (None at the end)."""
    offset = 0
    cursor = request.args.get("cursor")
    if cursor:
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApiError(400, '"cursor" is invalid') from None
    end = offset + _limit()
    next_cursor = None
    if end < len(items):
        next_cursor = base64.urlsafe_b64encode(json.dumps({"offset": end}).encode()).decode()
    return items[offset:end], next_cursor


def cursor_list(items: list[dict[str, Any]]) -> Response:
    """A v2 (or cursor-paged v1) list answer."""
    page, next_cursor = cursor_page(items)
    return jsonify({"success": True, "data": page, "additional_data": {"next_cursor": next_cursor}})


def offset_list(items: list[dict[str, Any]]) -> Response:
    """A v1 start/limit list answer."""
    start = max(int_arg("start") or 0, 0)
    limit = min(max(int_arg("limit") or 100, 1), 500)
    more = start + limit < len(items)
    extra = {"start": start, "limit": limit, "more_items_in_collection": more}
    return jsonify(
        {"success": True, "data": items[start : start + limit], "additional_data": extra}
    )
