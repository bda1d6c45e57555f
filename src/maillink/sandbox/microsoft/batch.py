"""JSON $batch for the Graph sandbox, and the in-flight requests of each mailbox.

A batch takes up to 20 requests; its parts run through the whole app (faults included), four at a
time like Outlook, and are answered in order with their status, headers and body.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request
from werkzeug.test import Client, TestResponse

from maillink.sandbox._server import Meter
from maillink.sandbox.microsoft.odata import graph_error

BATCH_PART = "maillink.sandbox.batch_part"
MAX_BATCH = 20
OUTLOOK_CONCURRENCY = 4


@dataclass
class Traffic:
    """In-flight requests per mailbox, their highest overlap, and when each one started."""

    limit: int = OUTLOOK_CONCURRENCY
    in_flight: dict[str, int] = field(default_factory=dict)
    highest: dict[str, int] = field(default_factory=dict)
    log: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def request(self, mailbox: str, what: str) -> Iterator[bool]:
        """Counts the request in; yields False when it is over Outlook's concurrency limit."""
        with self.lock:
            now = self.in_flight.get(mailbox, 0) + 1
            self.in_flight[mailbox] = now
            self.highest[mailbox] = max(self.highest.get(mailbox, 0), now)
            self.log.setdefault(mailbox, []).append((time.monotonic(), what))
        try:
            yield now <= self.limit
        finally:
            with self.lock:
                self.in_flight[mailbox] -= 1


def run_batch(app: Flask, meter: Meter) -> Any:
    """JSON batching: up to 20 requests, run up to 4 at a time like Outlook, answered in order."""
    try:
        payload = request.get_json(force=True)
        requests_ = payload["requests"]
        assert isinstance(requests_, list)
    except Exception:
        return graph_error(400, "BadRequest", "Invalid batch payload.")
    refusal = _batch_refusal(requests_)
    if refusal is not None:
        return graph_error(400, "BadRequest", refusal)
    authorization = request.headers.get("Authorization", "")

    def run(part: dict[str, Any]) -> dict[str, Any]:
        meter.count("graph.batch.part")
        return _run_part(app, part, authorization)

    with ThreadPoolExecutor(max_workers=OUTLOOK_CONCURRENCY) as pool:
        responses = list(pool.map(run, requests_))
    return {"responses": responses}


def _batch_refusal(requests_: list[Any]) -> str | None:
    """Why Graph would refuse this batch as a whole (400 BadRequest); None when it runs."""
    if len(requests_) > MAX_BATCH:
        return f"Number of requests exceeds the limit of {MAX_BATCH}."
    ids = [str(part.get("id", "")) for part in requests_]
    if len(set(ids)) != len(ids) or any(not i for i in ids):
        return "Each request of a batch needs a unique id."
    if any(part.get("dependsOn") for part in requests_):
        return "The sandbox does not run dependsOn batches."
    return None


def _run_part(app: Flask, part: dict[str, Any], authorization: str) -> dict[str, Any]:
    """One request of a batch, run through the app with the batch's credentials."""
    url = str(part.get("url", ""))
    method = str(part.get("method", "GET")).upper()
    if not url.startswith("/") or method != "GET":
        error = graph_error(400, "BadRequest", "Only relative GET requests are supported.")
        return {"id": part["id"], "status": 400, "body": error.get_json()}
    split = urlsplit(url)
    headers = {str(k): str(v) for k, v in (part.get("headers") or {}).items()}
    headers["Authorization"] = authorization
    answer = Client(app).open(
        "/v1.0" + split.path,
        method=method,
        query_string=split.query,
        headers=headers,
        environ_overrides={BATCH_PART: True},
    )
    return {"id": part["id"], "status": answer.status_code, **_part_answer(answer)}


def _part_answer(answer: TestResponse) -> dict[str, Any]:
    """A part's kept headers and its body (JSON when it parses, else text)."""
    try:
        body: Any = json.loads(answer.get_data(as_text=True) or "null")
    except ValueError:
        body = answer.get_data(as_text=True)
    kept = {
        k: v
        for k, v in answer.headers.items()
        if k.lower() in ("retry-after", "location", "content-type")
    }
    return {"headers": kept, "body": body}
