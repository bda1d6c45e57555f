"""Hold request and response bodies against Pipedrive's published OpenAPI specs.

The specs are vendored in `tests/reference/` (see its README.md); a missing file fails the tests
that need it. They are parsed once per session (the v1 file is 2.7 MB of YAML): the parsed dict is
pickled in the temp directory, keyed by the file's mtime and size.

The check is stricter than the specs on one side and looser on another, on purpose:
- objects may not carry properties the spec does not list (the specs never say
  `additionalProperties: false`, so without this an invented field would pass);
- responses may carry null for any property: Pipedrive marks few fields `nullable` although the
  live API sends null for every empty value (`won_time` of an open deal…). Requests get null only
  where the caller names the field.
Operations whose spec defines no error response are checked against the spec's own error shape.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS30Validator, OAS31Validator

SPEC_FILES = {"v1": "pipedrive-openapi-v1.yaml", "v2": "pipedrive-openapi-v2.yaml"}
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
# Pipedrive's generic error body, as the v1 spec describes it for a missing lead.
ERROR_SHAPE_AT = ("v1", "/leads/{id}", "get", "404")


def spec_path(version: str) -> Path:
    """The vendored spec file of that version; an AssertionError names it when it is missing."""
    source = REFERENCE_DIR / SPEC_FILES[version]
    if not source.is_file():
        raise AssertionError(f"{source} is missing: the tests need Pipedrive's vendored spec there")
    return source


@functools.cache
def spec(version: str) -> dict[str, Any]:
    """The parsed spec ("v1" or "v2"), from the pickle cache when the file has not changed."""
    source = spec_path(version)
    stat = source.stat()
    cache = Path(tempfile.gettempdir()) / "maillink-openapi-cache"
    cached = cache / f"{source.stem}-{stat.st_mtime_ns}-{stat.st_size}.pickle"
    if cached.is_file():
        try:
            with cached.open("rb") as handle:
                loaded: dict[str, Any] = pickle.load(handle)
            return loaded
        except (OSError, pickle.UnpicklingError, EOFError):
            pass
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with source.open("rb") as handle:
        parsed: dict[str, Any] = yaml.load(handle, Loader=loader)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    with partial.open("wb") as handle:
        pickle.dump(parsed, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, cached)  # atomic: parallel test workers may race here
    return parsed


def version_of(url_path: str) -> str:
    if url_path.startswith("/api/v2/"):
        return "v2"
    if url_path.startswith(("/api/v1/", "/v1/")):
        return "v1"
    raise ValueError(f"{url_path} is not a Pipedrive API path")


def template_of(url_path: str) -> tuple[str, str]:
    """("v2", "/activities/{id}") for "/api/v2/activities/17": literal paths win over templates."""
    version = version_of(url_path)
    relative = re.sub(r"^/api/v[12]|^/v1", "", url_path.split("?", 1)[0])
    paths = spec(version)["paths"]
    if relative in paths:
        return version, relative
    for template in paths:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, relative):
            return version, template
    raise AssertionError(f"{url_path} is not in Pipedrive's {version} spec")


def operation(version: str, template: str, method: str) -> dict[str, Any]:
    found: dict[str, Any] = spec(version)["paths"][template][method.lower()]
    return found


def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """`node` with every local `$ref` inlined (the specs' only kind)."""
    if depth > 50:
        raise AssertionError("$ref nesting too deep")
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            return _resolve(target, root, depth + 1)
        return {key: _resolve(value, root, depth) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, root, depth) for value in node]
    return node


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """One schema out of `allOf` parts, so that `additionalProperties: false` sees every property."""
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    for part in schema.get("allOf", []):
        part = _merge_all_of(part)
        for key, value in part.items():
            if key == "properties":
                merged.setdefault("properties", {}).update(value)
            elif key == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged.setdefault(key, value)
    return merged


def strict(
    version: str,
    schema: dict[str, Any],
    *,
    null_anywhere: bool,
    nullable: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The schema with allOf merged, unknown properties refused, and null allowed as asked."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(value) for value in node]
        if not isinstance(node, dict):
            return node
        node = _merge_all_of(node)
        node = {key: walk(value) if key != "example" else value for key, value in node.items()}
        properties = node.get("properties")
        if isinstance(properties, dict):
            node.setdefault("additionalProperties", False)
            for name, sub in properties.items():
                if isinstance(sub, dict) and (null_anywhere or name in nullable):
                    sub["nullable"] = True
        return node

    resolved = _resolve(copy.deepcopy(schema), spec(version))
    result: dict[str, Any] = walk(resolved)
    return result


def _validator(version: str, schema: dict[str, Any]) -> OAS30Validator | OAS31Validator:
    if str(spec(version).get("openapi", "3.0")).startswith("3.1"):
        return OAS31Validator(schema)
    return OAS30Validator(schema)


def errors(version: str, schema: dict[str, Any], body: Any) -> list[str]:
    found = _validator(version, schema).iter_errors(body)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}" for e in found)


def _json_schema(holder: dict[str, Any]) -> dict[str, Any]:
    content = holder.get("content") or {}
    media = content.get("application/json") or next(iter(content.values()), {})
    found: dict[str, Any] = media["schema"]
    return found


def response_schema(url_path: str, method: str, status: int) -> tuple[str, dict[str, Any]]:
    """The spec's schema of that answer; Pipedrive's error shape where an error is undefined."""
    version, template = template_of(url_path)
    responses = operation(version, template, method)["responses"]
    if str(status) in responses:
        return version, _json_schema(responses[str(status)])
    if status >= 400:
        shape_version, shape_path, shape_method, shape_status = ERROR_SHAPE_AT
        shape = operation(shape_version, shape_path, shape_method)["responses"][shape_status]
        return shape_version, _json_schema(shape)
    raise AssertionError(f"the spec defines no {status} answer for {method} {template}")


def response_errors(url_path: str, method: str, status: int, body: Any) -> list[str]:
    version, schema = response_schema(url_path, method, status)
    return errors(version, strict(version, schema, null_anywhere=True), body)


def request_errors(
    url_path: str, method: str, body: Any, *, nullable: frozenset[str] = frozenset()
) -> list[str]:
    version, template = template_of(url_path)
    schema = _json_schema(operation(version, template, method)["requestBody"])
    strict_schema = strict(version, schema, null_anywhere=False, nullable=nullable)
    return errors(version, strict_schema, body)


def query_parameters(url_path: str, method: str) -> set[str]:
    version, template = template_of(url_path)
    params = operation(version, template, method).get("parameters", [])
    return {p["name"] for p in params if p.get("in") == "query"}


def token_cost(url_path: str, method: str) -> int:
    version, template = template_of(url_path)
    return int(operation(version, template, method)["x-token-cost"])
