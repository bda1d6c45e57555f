"""HubSpot's reads that page or batch: records by id, v4 associations, search results.

Each takes the account's `HubSpotHTTP`; none keeps state. Batch reads and associations take 100
inputs a request; a 207 answer names the inputs HubSpot has nothing for, which are simply left
out. Search pages follow `paging.next.after` and stop on a repeated cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from maillink.crm.hubspot_http import HubSpotHTTP
from maillink.crm.hubspot_items import numeric_id

BATCH = 100  # inputs of a v3 or v4 batch request
SEARCH_PAGE = 200


def chunks(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def associated(
    http: HubSpotHTTP, from_type: str, to_type: str, ids: list[int]
) -> dict[int, set[int]]:
    """to id -> the `ids` associated with it (v4 batch read; a 207 names the ids that have
    none)."""
    linked: dict[int, set[int]] = {}
    for chunk in chunks(ids, BATCH):
        pending = [{"id": str(i)} for i in chunk]
        while pending:
            answer = http.call(
                f"associations.{from_type}.{to_type}",
                "POST",
                f"/crm/v4/associations/{from_type}/{to_type}/batch/read",
                json={"inputs": pending},
            )
            pending = []
            for result in answer.get("results") or ():
                from_id = numeric_id((result.get("from") or {}).get("id"))
                for to in result.get("to") or ():
                    to_id = numeric_id(to.get("toObjectId"))
                    if from_id is not None and to_id is not None:
                        linked.setdefault(to_id, set()).add(from_id)
                after = ((result.get("paging") or {}).get("next") or {}).get("after")
                if after and from_id is not None:
                    pending.append({"id": str(from_id), "after": str(after)})
    return linked


def read_records(
    http: HubSpotHTTP, type_name: str, ids: list[int], properties: list[str]
) -> Iterator[Any]:
    """The live records of these ids (archived and unknown ones are left out)."""
    for chunk in chunks(ids, BATCH):
        body = {"inputs": [{"id": str(i)} for i in chunk], "properties": properties}
        answer = http.call(
            f"{type_name}.batch_read",
            "POST",
            f"/crm/v3/objects/{type_name}/batch/read",
            json=body,
        )
        yield from (r for r in answer.get("results") or () if numeric_id(r.get("id")))


def search_pages(
    http: HubSpotHTTP, type_name: str, groups: list[dict[str, Any]], properties: list[str]
) -> Iterator[Any]:
    """Each page of results of a search, following `paging.next.after`."""
    after: str | None = None
    seen: set[str] = set()
    while True:
        body: dict[str, Any] = {
            "filterGroups": groups,
            "properties": properties,
            "limit": SEARCH_PAGE,
        }
        if after is not None:
            body["after"] = after
        answer = http.call(
            f"{type_name}.search", "POST", f"/crm/v3/objects/{type_name}/search", json=body
        )
        yield answer.get("results") or []
        after = ((answer.get("paging") or {}).get("next") or {}).get("after")
        if not after or after in seen:  # a repeated cursor would loop
            return
        seen.add(after)


def all_owners(http: HubSpotHTTP) -> Iterator[Any]:
    """Every active owner of GET /crm/v3/owners, page after page (500 a page)."""
    params: dict[str, Any] = {"limit": 500}
    seen: set[str] = set()
    while True:
        answer = http.call("owners.list", "GET", "/crm/v3/owners", params=params)
        yield from answer.get("results") or ()
        after = ((answer.get("paging") or {}).get("next") or {}).get("after")
        if not after or after in seen:
            return
        seen.add(after)
        params = {"limit": 500, "after": after}
