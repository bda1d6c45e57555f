"""The CRM search API's request as HubSpot reads it: filter groups (OR of ANDs), one sort, a
page of at most 200 and no more than 10,000 results in all.

Values compare as HubSpot compares them: `email` and the semicolon-separated
`hs_additional_emails` without case, datetimes as instants (ISO 8601 or epoch milliseconds),
numbers as numbers, the rest as strings. A multi-valued property matches EQ or CONTAINS_TOKEN
when any of its values does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.records import HubObject, parse_time

MAX_PAGE = 200
_NEVER = datetime.min.replace(tzinfo=UTC)
MAX_RESULTS = 10_000
MAX_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
MAX_FILTERS = 18
_MULTI_VALUED = {"hs_additional_emails"}
_CASELESS = {"email", "hs_additional_emails"}
_TIME_PROPERTIES = {
    "createdate",
    "hs_createdate",
    "lastmodifieddate",
    "hs_lastmodifieddate",
    "closedate",
    "hs_timestamp",
    "hs_v2_date_entered_current_stage",
}
_OPERATORS = {
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
}


@dataclass(frozen=True)
class SearchRequest:
    groups: list[list[dict[str, Any]]]
    sort: tuple[str, bool] | None  # (property, descending)
    limit: int
    after: int
    properties: list[str]


def parse_search(body: Any) -> SearchRequest:
    """The request, or a 400 in HubSpot's words for what it would refuse."""
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid input JSON: the body must be an object")
    groups = body.get("filterGroups") or []
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
        raise ApiError(400, f"Too many filter groups: at most {MAX_GROUPS} are allowed")
    parsed = []
    for group in groups:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list) or len(filters) > MAX_FILTERS_PER_GROUP:
            raise ApiError(400, f"Each filter group takes 1 to {MAX_FILTERS_PER_GROUP} filters")
        for item in filters:
            _check_filter(item)
        parsed.append(filters)
    if sum(len(filters) for filters in parsed) > MAX_FILTERS:
        raise ApiError(400, f"Too many filters: at most {MAX_FILTERS} in all")
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
    after = str(body.get("after") or "0")
    if not after.isdigit():
        raise ApiError(400, f"Invalid after: {after}")
    if int(after) >= MAX_RESULTS:
        raise ApiError(400, f"Paging past {MAX_RESULTS} results is not supported")
    names = body.get("properties") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "properties must be a list of property names")
    return SearchRequest(parsed, _sort(body.get("sorts") or []), limit, int(after), names)


def _check_filter(item: Any) -> None:
    if not isinstance(item, dict) or not isinstance(item.get("propertyName"), str):
        raise ApiError(400, "Each filter needs a propertyName and an operator")
    operator = item.get("operator")
    if operator not in _OPERATORS:
        raise ApiError(400, f"Unknown filter operator: {operator}")
    if operator in ("IN", "NOT_IN") and not isinstance(item.get("values"), list):
        raise ApiError(400, f"The {operator} operator needs a values list")
    if operator == "BETWEEN" and ("value" not in item or "highValue" not in item):
        raise ApiError(400, "The BETWEEN operator needs value and highValue")


def _sort(sorts: Any) -> tuple[str, bool] | None:
    """One sort, as "-name"/"name" or {"propertyName", "direction"}."""
    if not isinstance(sorts, list) or len(sorts) > 1:
        raise ApiError(400, "At most one sort is supported")
    if not sorts:
        return None
    sort = sorts[0]
    if isinstance(sort, str):
        return (sort.lstrip("-"), sort.startswith("-"))
    if isinstance(sort, dict) and isinstance(sort.get("propertyName"), str):
        return (sort["propertyName"], sort.get("direction", "ASCENDING") == "DESCENDING")
    raise ApiError(400, "Invalid sort")


def _values(obj: HubObject, name: str) -> list[str]:
    if name in ("hs_object_id", "id"):
        return [str(obj.id)]
    raw = obj.properties.get(name)
    if raw is None or raw == "":
        return []
    values = raw.split(";") if name in _MULTI_VALUED else [raw]
    return [v.strip().lower() if name in _CASELESS else v for v in values]


def _key(name: str, value: str) -> Any:
    if name in _TIME_PROPERTIES:
        return (0, parse_time(value) or _NEVER)
    try:
        return (1, float(value))
    except ValueError:
        return (2, value.lower())


def _compare(name: str, have: str, operator: str, item: dict[str, Any]) -> bool:
    want = str(item.get("value", ""))
    if name in _CASELESS:
        want = want.lower()
    checks: dict[str, Callable[[], bool]] = {
        "EQ": lambda: _key(name, have) == _key(name, want),
        "LT": lambda: _key(name, have) < _key(name, want),
        "LTE": lambda: _key(name, have) <= _key(name, want),
        "GT": lambda: _key(name, have) > _key(name, want),
        "GTE": lambda: _key(name, have) >= _key(name, want),
        "BETWEEN": lambda: (
            _key(name, want) <= _key(name, have) <= _key(name, str(item.get("highValue", "")))
        ),
        "IN": lambda: have.lower() in [str(v).lower() for v in item["values"]],
        "CONTAINS_TOKEN": lambda: any(
            fnmatch.fnmatchcase(token, want.lower()) for token in _tokens(have.lower())
        ),
    }
    return checks[operator]()


def _tokens(value: str) -> list[str]:
    """The value and its words: CONTAINS_TOKEN matches either (`*` is a wildcard)."""
    return [value, *(t for t in re.split(r"[\s;,]+", value) if t)]


def unknown_properties(search: SearchRequest, known: set[str]) -> list[str]:
    """Filter and sort properties the object type does not have (HubSpot answers 400)."""
    named = {f["propertyName"] for group in search.groups for f in group}
    if search.sort is not None:
        named.add(search.sort[0])
    return sorted(named - known - {"hs_object_id", "id"})


def matches(obj: HubObject, item: dict[str, Any]) -> bool:
    name, operator = item["propertyName"], item["operator"]
    values = _values(obj, name)
    if operator == "HAS_PROPERTY":
        return bool(values)
    if operator == "NOT_HAS_PROPERTY":
        return not values
    negated = {"NEQ": "EQ", "NOT_IN": "IN", "NOT_CONTAINS_TOKEN": "CONTAINS_TOKEN"}
    if operator in negated:
        return not any(_compare(name, v, negated[operator], item) for v in values)
    return any(_compare(name, v, operator, item) for v in values)


def run_search(objects: list[HubObject], search: SearchRequest) -> tuple[list[HubObject], int]:
    """The page of matching objects and the total that match."""
    found = [
        obj
        for obj in objects
        if not search.groups or any(all(matches(obj, f) for f in g) for g in search.groups)
    ]
    if search.sort is None:
        found.sort(key=lambda obj: obj.id)
    else:
        name, descending = search.sort
        found.sort(
            key=lambda obj: (_key(name, (_values(obj, name) or [""])[0]), obj.id),
            reverse=descending,
        )
    total = min(len(found), MAX_RESULTS)
    return found[search.after : search.after + search.limit], total
