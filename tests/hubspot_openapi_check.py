"""Hold request and response bodies against HubSpot's published OpenAPI specs.

The specs are vendored in `tests/reference/hubspot/` (see its README.md); a missing file fails
the tests that need it. Like `openapi_check` for Pipedrive, the check is stricter than the specs
on one side and looser on another, on purpose:
- objects may not carry properties the spec does not list (the specs never say
  `additionalProperties: false`, so without this an invented field would pass);
- a response's object `properties` may map a name to null: HubSpot answers null for a requested
  property that has no value, where the spec says string;
- HubSpot's error bodies carry `"status": "error"`, which the spec's `Error` omits; its 429 bodies
  have their own shape (`errorType`, `policyName`, from HubSpot's API usage guide);
- requests may leave out what the spec marks required but HubSpot's API and documentation treat
  as optional (`OPTIONAL_IN_REQUESTS`).
Paths name deals as `deals` or `0-3`, and `/oauth/v1/token` is checked as `/oauth/v3/token`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator

REFERENCE_DIR = Path(__file__).resolve().parent / "reference" / "hubspot"
SPEC_FILES = (
    "crm-associations-v4.json",
    "crm-companies-v3.json",
    "crm-contacts-v3.json",
    "crm-deals-v3.json",
    "crm-emails-v3.json",
    "crm-leads-v3.json",
    "crm-owners-v3.json",
    "oauth-v3.json",
)
OPTIONAL_IN_REQUESTS = {
    "BatchReadInputSimplePublicObjectId": {"propertiesWithHistory"},
    "PublicObjectSearchRequest": {"after", "sorts", "limit", "properties", "filterGroups"},
    "SimplePublicObjectInputForCreate": {"associations"},
    "SimplePublicObjectBatchInputForCreate": {"associations"},
}
ERROR_EXTRAS = {"status": {"type": "string"}}
RATE_LIMIT_BODY = {
    "type": "object",
    "required": ["status", "message", "errorType", "correlationId", "policyName"],
    "additionalProperties": False,
    "properties": {
        "status": {"type": "string", "enum": ["error"]},
        "message": {"type": "string"},
        "errorType": {"type": "string", "enum": ["RATE_LIMIT"]},
        "correlationId": {"type": "string"},
        "policyName": {"type": "string", "enum": ["TEN_SECONDLY_ROLLING", "SECONDLY", "DAILY"]},
        "requestId": {"type": "string"},
    },
}


@functools.cache
def spec(name: str) -> dict[str, Any]:
    source = REFERENCE_DIR / name
    if not source.is_file():
        raise AssertionError(f"{source} is missing: the tests need HubSpot's vendored spec there")
    loaded: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    return loaded


def _spec_path(url_path: str) -> str:
    path = url_path.split("?", 1)[0]
    path = re.sub(r"^/crm/v3/objects/deals(?=/|$)", "/crm/v3/objects/0-3", path)
    return re.sub(r"^/oauth/v1/token$", "/oauth/v3/token", path)


def template_of(url_path: str) -> tuple[str, str]:
    """(spec file, path template) of a request path: literal paths win over templates."""
    path = _spec_path(url_path)
    for name in SPEC_FILES:
        if path in spec(name)["paths"]:
            return name, path
    for name in SPEC_FILES:
        for template in spec(name)["paths"]:
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path):
                return name, template
    raise AssertionError(f"{url_path} is in none of HubSpot's vendored specs")


def operation(url_path: str, method: str) -> tuple[str, dict[str, Any]]:
    name, template = template_of(url_path)
    methods = spec(name)["paths"][template]
    if method.lower() not in methods:
        raise AssertionError(f"the spec has no {method} {template}")
    found: dict[str, Any] = methods[method.lower()]
    return name, found


def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """`node` with every local `$ref` inlined; a ref's schema name is kept in `x-schema`."""
    if depth > 50:
        raise AssertionError("$ref nesting too deep")
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            resolved = _resolve(target, root, depth + 1)
            if isinstance(resolved, dict) and node["$ref"].startswith("#/components/schemas/"):
                resolved = {**resolved, "x-schema": node["$ref"].rsplit("/", 1)[1]}
            return resolved
        return {key: _resolve(value, root, depth) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, root, depth) for value in node]
    return node


def strict(spec_name: str, schema: dict[str, Any], *, response: bool) -> dict[str, Any]:
    """The schema with unknown properties refused and HubSpot's known liberties allowed."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(value) for value in node]
        if not isinstance(node, dict):
            return node
        node = {key: walk(value) if key != "example" else value for key, value in node.items()}
        name = node.get("x-schema")
        properties = node.get("properties")
        if name == "Error" and isinstance(properties, dict):
            properties.update(copy.deepcopy(ERROR_EXTRAS))
        if isinstance(properties, dict) and properties and "oneOf" not in node:
            node.setdefault("additionalProperties", False)
        extra = node.get("additionalProperties")
        if response and isinstance(extra, dict) and extra.get("type") == "string":
            extra["nullable"] = True
        if not response and name in OPTIONAL_IN_REQUESTS and "required" in node:
            node["required"] = [r for r in node["required"] if r not in OPTIONAL_IN_REQUESTS[name]]
        if "oneOf" in node and properties == {}:
            del node["properties"]
        return node

    resolved = _resolve(copy.deepcopy(schema), spec(spec_name))
    result: dict[str, Any] = walk(resolved)
    return result


def errors(schema: dict[str, Any], body: Any) -> list[str]:
    found = OAS30Validator(schema).iter_errors(body)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in found)


def _content_schema(holder: dict[str, Any]) -> dict[str, Any]:
    content = holder.get("content") or {}
    media = content.get("application/json") or next(iter(content.values()), {})
    found: dict[str, Any] = media["schema"]
    return found


def response_schema(url_path: str, method: str, status: int) -> tuple[str, dict[str, Any]]:
    """The spec's schema of that answer (`default` for errors the operation does not list)."""
    name, found = operation(url_path, method)
    responses = found["responses"]
    answer = responses.get(str(status)) or (responses.get("default") if status >= 400 else None)
    if answer is None:
        raise AssertionError(f"the spec defines no {status} answer for {method} {url_path}")
    answer = _resolve(answer, spec(name))
    return name, _content_schema(answer)


def response_errors(url_path: str, method: str, status: int, body: Any) -> list[str]:
    if status == 429:
        return errors(RATE_LIMIT_BODY, body)
    name, schema = response_schema(url_path, method, status)
    return errors(strict(name, schema, response=True), body)


def request_errors(url_path: str, method: str, body: Any) -> list[str]:
    """What the spec's requestBody schema refuses in `body` (JSON, or a form as a dict)."""
    name, found = operation(url_path, method)
    schema = _content_schema(found["requestBody"])
    return errors(strict(name, schema, response=False), body)


def query_parameters(url_path: str, method: str) -> set[str]:
    _, found = operation(url_path, method)
    return {p["name"] for p in found.get("parameters", []) if p.get("in") == "query"}
