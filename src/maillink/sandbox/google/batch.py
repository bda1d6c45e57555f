"""Google's batch endpoint for the sandbox: one multipart/mixed POST carrying up to 100 API calls.

Each inner request runs through the whole WSGI stack again (fault injection and status meter
included), so a fault can hit one part of a batch that itself answers 200.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from flask import Flask, Response, request
from werkzeug.test import EnvironBuilder, run_wsgi_app

from maillink.sandbox._server import Meter
from maillink.sandbox.google.errors import GoogleApiError, bad_request

MAX_BATCH_PARTS = 100
INNER_FLAG = "maillink.sandbox.inner"
"""Set in the WSGI environ of a request dispatched from inside a batch."""
RESET_FLAG = "maillink.sandbox.reset"
"""Set in the batch's environ when a part met an injected connection reset."""


@dataclass(frozen=True)
class InnerRequest:
    content_id: str | None
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


def parse_batch(content_type: str, data: bytes) -> list[InnerRequest]:
    """The inner requests of a multipart/mixed batch body; GoogleApiError 400 when malformed."""
    if not content_type.lower().startswith("multipart/mixed") or "boundary=" not in content_type:
        raise bad_request("Batch requests need Content-Type multipart/mixed with a boundary.")
    envelope = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + data
    message = BytesParser(policy=compat32).parsebytes(envelope)
    parts = message.get_payload() if message.is_multipart() else None
    if not isinstance(parts, list) or not parts:
        raise bad_request("The batch request holds no parts.")
    if len(parts) > MAX_BATCH_PARTS:
        raise bad_request(f"A batch request cannot contain more than {MAX_BATCH_PARTS} requests.")
    return [_inner_request(part) for part in parts if isinstance(part, Message)]


def _inner_request(part: Message) -> InnerRequest:
    content_id = part.get("Content-ID")
    if part.get_content_type() != "application/http":
        raise bad_request("Each part of a batch must have Content-Type application/http.")
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise bad_request("Malformed batch part.")
    ends = [(i, blank) for blank in (b"\r\n\r\n", b"\n\n") if (i := payload.find(blank)) >= 0]
    if ends:
        end, blank = min(ends)
        head, body = payload[:end], payload[end + len(blank) :]
    else:
        head, body = payload, b""
    lines = head.decode("utf-8", "replace").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    request_line = lines[0].split() if lines else []
    if len(request_line) < 2:
        raise bad_request("Malformed request line in a batch part.")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise bad_request(f"Malformed header line in a batch part: {line!r}")
        headers.append((name.strip(), value.strip()))
    return InnerRequest(
        content_id.strip() if content_id else None,
        request_line[0].upper(),
        request_line[1],
        headers,
        body,
    )


def _path_of(target: str) -> str:
    """`/gmail/v1/...?...` from an origin-form or absolute-form request target."""
    if "://" in target:
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return target


def _dispatch(app: Flask, inner: InnerRequest, outer: dict[str, Any]) -> tuple[str, Any, bytes]:
    """Run one inner request through the app; (status line, headers, body)."""
    target = _path_of(inner.target)
    if not target.startswith("/gmail/v1/"):
        error = bad_request("Every request of a Gmail batch must go to /gmail/v1/.")
        response = error.response()
        return "400 Bad Request", response.headers, response.get_data()
    headers = [(n, v) for n, v in inner.headers if n.lower() not in ("host", "content-length")]
    if not any(n.lower() == "authorization" for n, _ in headers) and outer.get(
        "HTTP_AUTHORIZATION"
    ):
        headers.append(("Authorization", outer["HTTP_AUTHORIZATION"]))
    path, _, query = target.partition("?")
    builder = EnvironBuilder(
        path=path,
        query_string=query,
        method=inner.method,
        headers=headers,
        data=inner.body,
        base_url=f"{outer.get('wsgi.url_scheme', 'http')}://{outer.get('HTTP_HOST', 'localhost')}",
        environ_overrides={INNER_FLAG: True, "werkzeug.socket": outer.get("werkzeug.socket")},
    )
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    try:
        body = b"".join(app_iter)
    finally:
        close = getattr(app_iter, "close", None)
        if close is not None:
            close()
    return status, response_headers, body


def _response_part(content_id: str | None, status: str, headers: Any, body: bytes) -> bytes:
    lines = ["Content-Type: application/http"]
    if content_id:
        inner_id = content_id[1:-1] if content_id.startswith("<") else content_id
        lines.append(f"Content-ID: <response-{inner_id}>")
    lines += ["", f"HTTP/1.1 {status}"]
    lines += [f"{n}: {v}" for n, v in headers if n.lower() != "content-length"]
    lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body


def register_batch_route(app: Flask, meter: Meter) -> None:
    """Mount POST /batch/gmail/v1 (and the generic /batch) on `app`."""

    def batch() -> Response:
        meter.count("gmail.batch")
        try:
            inner_requests = parse_batch(
                request.headers.get("Content-Type", ""), request.get_data()
            )
        except GoogleApiError as error:
            return error.response()
        boundary = "batch_" + secrets.token_urlsafe(18)
        chunks: list[bytes] = []
        for inner in inner_requests:
            try:
                status, headers, body = _dispatch(app, inner, request.environ)
            except ConnectionError:
                # An injected reset on one part drops the whole batch's connection.
                request.environ[RESET_FLAG] = True
                return Response(b"", status=200)
            chunks.append(b"--" + boundary.encode() + b"\r\n")
            chunks.append(_response_part(inner.content_id, status, headers, body) + b"\r\n")
        chunks.append(b"--" + boundary.encode() + b"--\r\n")
        return Response(b"".join(chunks), content_type=f"multipart/mixed; boundary={boundary}")

    app.add_url_rule("/batch/gmail/v1", "gmail_batch", batch, methods=["POST"])
    app.add_url_rule("/batch", "batch", batch, methods=["POST"])
