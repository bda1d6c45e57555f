"""Shared plumbing of the sandbox servers: a WSGI server thread, fault injection, request meter."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from flask import Flask, Response
from werkzeug.serving import WSGIRequestHandler, make_server


@dataclass
class Fault:
    """An answer the sandbox gives instead of the real one, `times` times, to matching requests.

    `path` is a regular expression searched in the request path; `method` None matches any.
    `action` is "status" (answer `status` with `headers` and `body`), "reset" (close the
    connection without answering) or "delay" (sleep `seconds`, then answer normally).
    `after` lets that many matching requests through first.
    """

    path: str
    status: int = 503
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = None
    times: int = 1
    after: int = 0
    action: str = "status"
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


class FaultPlan:
    """Faults waiting to be served, in the order they were added. Thread-safe."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The fault to serve for this request, if any (consumes one of its `times`)."""
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(method, path):
                    if fault.after > 0:
                        fault.after -= 1
                        return None
                    fault.times -= 1
                    return fault
        return None


class Meter:
    """Counts requests (by name) and cost units (quota units, API tokens). Thread-safe."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.units: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()

    def count(self, name: str, units: int = 0, n: int = 1) -> None:
        with self._lock:
            self.requests[name] += n
            if units:
                self.units[name] += units

    def status(self, code: int) -> None:
        with self._lock:
            self.statuses[code] += 1

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_units(self) -> int:
        return sum(self.units.values())

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.units.clear()
            self.statuses.clear()


def install_faults(app: Flask, faults: FaultPlan, meter: Meter | None = None) -> None:
    """Serve injected faults before the app's own views, and count every answer's status.

    Faults are served at the WSGI layer, in front of Flask, so that a "reset" can close the
    client's connection without any answer, as a dropped connection does.
    """
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        fault = faults.take(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""))
        if fault is not None and fault.action == "delay":
            time.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.action == "reset":
            _reset(environ, "sandbox: injected connection reset")
        if fault is not None:
            body = fault.body
            mimetype = "application/json" if body.startswith(("{", "[")) else "text/plain"
            response = Response(body, status=fault.status, headers=fault.headers, mimetype=mimetype)
            if meter is not None:
                meter.status(fault.status)
            return response(environ, start_response)

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            if meter is not None:
                meter.status(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        return inner(environ, counting_start_response)

    app.wsgi_app = middleware  # type: ignore[method-assign]


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        return None


class ServerThread:
    """Runs a Flask app on 127.0.0.1 in a daemon thread; `stop()` shuts it down and joins."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0, ssl_context: Any = None):
        self._server = make_server(
            host, port, app, threaded=True, ssl_context=ssl_context, request_handler=_QuietHandler
        )
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://{host}:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class _Lost:
    path: re.Pattern[str]
    method: str | None
    times: int


class LostResponses:
    """Requests that are carried out, then answered by nothing: the connection is reset (a write
    whose outcome the client cannot know). Shared by the CRM sandboxes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lost: list[_Lost] = []

    def add(self, path_regex: str, method: str | None = "POST", times: int = 1) -> None:
        with self._lock:
            self._lost.append(_Lost(re.compile(path_regex), method, times))

    def clear(self) -> None:
        with self._lock:
            self._lost.clear()

    def take(self, method: str, path: str) -> bool:
        """Whether this request's answer is to be lost (one of `times` used up)."""
        with self._lock:
            for lost in self._lost:
                if lost.times <= 0 or (lost.method and lost.method.upper() != method.upper()):
                    continue
                if lost.path.search(path):
                    lost.times -= 1
                    return True
        return False

    def serve(
        self, inner: Callable[..., Any], environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Any:
        """Run the request through `inner`; when its answer is to be lost, carry it out, drop
        what it answered and reset the connection."""
        if not self.take(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")):
            return inner(environ, start_response)
        body = inner(environ, lambda *args, **kwargs: lambda data: None)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        _reset(environ, "sandbox: the write was done, its response is lost")


def _reset(environ: dict[str, Any], why: str) -> NoReturn:
    """Close the client's connection without an answer, as a dropped connection does."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    raise ConnectionAbortedError(why)


@dataclass
class _Due:
    path: re.Pattern[str]
    method: str | None
    action: Callable[[], object]
    times: int


class UserActions:
    """Actions of a user in the CRM (deleting a deal, merging persons) due just before the next
    request matching a path and method is served: what happens between a client's decision and
    its write (the sandboxes' `before_next`)."""

    def __init__(self) -> None:
        self._due: list[_Due] = []
        self._lock = threading.Lock()

    def add(
        self, path_regex: str, action: Callable[[], object], method: str | None, times: int
    ) -> None:
        with self._lock:
            self._due.append(_Due(re.compile(path_regex), method, action, times))

    def run_due(self, method: str, path: str) -> None:
        """Run the actions due before this request (outside the lock: they may call the
        sandbox's API themselves)."""
        with self._lock:
            due = []
            for entry in self._due:
                if entry.times <= 0 or (entry.method and entry.method.upper() != method.upper()):
                    continue
                if entry.path.search(path):
                    entry.times -= 1
                    due.append(entry.action)
        for action in due:
            action()

    def clear(self) -> None:
        with self._lock:
            self._due.clear()
