"""maillink.toml and credentials.json pointing at running sandboxes: the demo's and the tests'."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maillink.secrets import TokenCipher


def write_workspace(
    folder: Path,
    google: Any,
    pipedrive: Any,
    *,
    internal_domains: Sequence[str] = (),
    blocked: Sequence[str] = ("noreply@*", "*@notifications.*"),
    multiple_open_items: str = "ask",
    store_url: str | None = None,
    microsoft: Any = None,
    hubspot: Any = None,
) -> Path:
    """Write both files into `folder`; returns the config's path. Only endpoints differ from a
    real deployment's files: nothing in the product knows it talks to a sandbox. With `hubspot`
    (a running HubSpot sandbox) the CRM is HubSpot and `pipedrive` may be None."""
    config = folder / "maillink.toml"
    store = store_url or f"sqlite:///{folder / 'maillink.db'}"
    config.write_text(
        f"""[store]
url = {json.dumps(store)}

[crm]
kind = {json.dumps("hubspot" if hubspot is not None else "pipedrive")}
base_url = {json.dumps((hubspot if hubspot is not None else pipedrive).url)}

[gmail]
api_endpoint = {json.dumps(google.api_endpoint)}

{_microsoft_section(microsoft)}[linking]
internal_domains = {json.dumps(list(internal_domains))}
blocked = {json.dumps(list(blocked))}
multiple_open_items = {json.dumps(multiple_open_items)}
"""
    )
    credentials: dict[str, Any] = {
        "google": google.client_config(),
        "encryption_key": TokenCipher.generate_key(),
    }
    if pipedrive is not None:
        credentials["pipedrive"] = {"api_token": pipedrive.api_token}
    if hubspot is not None:
        credentials["hubspot"] = {"access_token": hubspot.access_token}
    if microsoft is not None:
        credentials["microsoft"] = {"client_id": microsoft.client_id}
    (folder / "credentials.json").write_text(json.dumps(credentials, indent=2))
    return config


def _microsoft_section(microsoft: Any) -> str:
    if microsoft is None:
        return ""
    return (
        "[microsoft]\n"
        f"authority = {json.dumps(microsoft.authority)}\n"
        f"graph_url = {json.dumps(microsoft.graph_url)}\n\n"
    )
