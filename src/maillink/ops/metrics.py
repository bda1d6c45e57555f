"""Prometheus metrics of a daemon: what it synced and linked, the APIs it called, its leases.

Counters live in the daemon process (one registry per `Metrics`, so tests can run several). The
outbox depth and each mailbox's last successful sync are read from the store at scrape time: they
are the team's truth, whichever daemon did the work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from maillink.outbox import failed_count, pending_count
from maillink.providers.retry import Classifier, Failure, RetryPolicy
from maillink.store import Store
from maillink.store.accounts import last_syncs

log = logging.getLogger("maillink.ops")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

THROTTLED = 429
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class Metrics:
    """The daemon's counters and gauges, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "maillink_messages_synced", "Messages stored from the mailboxes.", registry=r
        )
        self.links = Counter(
            "maillink_links", "Decisions recorded, by reason code.", ["reason"], registry=r
        )
        self.rounds = Counter(
            "maillink_rounds",
            "Mailbox rounds, by outcome (ok, error, stopped, lease_lost).",
            ["outcome"],
            registry=r,
        )
        self.api_requests = Counter(
            "maillink_api_requests",
            "API requests answered, by service and HTTP status (or error kind).",
            ["service", "status"],
            registry=r,
        )
        self.api_retries = Counter(
            "maillink_api_retries",
            "API answers the retry policy retries (429, 5xx, connection errors), by service.",
            ["service", "status"],
            registry=r,
        )
        self.api_throttled = Counter(
            "maillink_api_throttled", "429 answers, by service.", ["service"], registry=r
        )
        self.lease_takeovers = Counter(
            "maillink_lease_takeovers",
            "Mailboxes taken over from a daemon whose lease had expired.",
            registry=r,
        )
        self.leases_lost = Counter(
            "maillink_leases_lost", "Mailboxes whose lease this daemon lost.", registry=r
        )
        self.leases_held = Gauge(
            "maillink_leases_held", "Mailboxes this daemon holds now.", registry=r
        )
        self.crm_changes = Counter(
            "maillink_crm_changes",
            "CRM change notifications applied to the caches, by source (webhook, poll).",
            ["source"],
            registry=r,
        )
        self.wakeups = Counter(
            "maillink_wakeups",
            "Push notifications that woke a mailbox, by source.",
            ["source"],
            registry=r,
        )

    def watch_store(self, store: Store) -> None:
        """Read the outbox depth and the last successful syncs from `store` at each scrape."""
        self.registry.register(_StoreCollector(store))

    def api_answer(self, service: str, status: int | str) -> None:
        code = str(status)
        self.api_requests.labels(service, code).inc()
        if status == THROTTLED:
            self.api_throttled.labels(service).inc()

    def api_retry(self, service: str, status: int | str) -> None:
        self.api_retries.labels(service, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.store.engine.connect() as conn:
                depth = pending_count(conn)
                failed = failed_count(conn)
                synced = last_syncs(conn)
        except Exception as exc:  # a scrape must not fail because the database is away
            log.warning("metrics: cannot read the store: %s", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            "maillink_outbox_pending", "CRM writes waiting to be delivered.", value=depth
        )
        yield GaugeMetricFamily(
            "maillink_outbox_failed",
            "CRM writes the CRM refused for good (see: maillink outbox list).",
            value=failed,
        )
        last = GaugeMetricFamily(
            "maillink_last_successful_sync_timestamp_seconds",
            "When each mailbox last finished a round without error (Unix time).",
            labels=["account_id"],
        )
        for account_id, when in synced:
            last.add_metric([str(account_id)], when.timestamp())
        yield last


def observe_requests_session(session: Any, metrics: Metrics, service: str) -> None:
    """Count every answer a `requests.Session` receives (the Pipedrive adapter's)."""

    def on_response(response: Any, *args: Any, **kwargs: Any) -> Any:
        metrics.api_answer(service, response.status_code)
        if response.status_code in RETRIED_STATUSES:
            metrics.api_retry(service, response.status_code)
        return response

    session.hooks.setdefault("response", []).append(on_response)


def _status(failure: Failure | None) -> int | str:
    if failure is None:
        return "error"
    return failure.status if failure.status is not None else (failure.reason or "error")


@dataclass(frozen=True)
class ObservedRetryPolicy(RetryPolicy):
    """The providers' retry policy, counting each attempt's outcome in `metrics`.

    A batch request counts once (as Gmail's own request count does); the failed parts of a batch
    count as retries and 429s too.
    """

    metrics: Metrics | None = field(default=None, compare=False)
    service: str = "gmail"

    def call(
        self, fn: Callable[[], T], *, classify: Classifier, call: str | None = None, what: str = ""
    ) -> T:
        def observed() -> T:
            try:
                result = fn()
            except Exception as exc:
                self._failed(classify(exc), call)
                raise
            if self.metrics is not None:
                self.metrics.api_answer(self.service, 200)
            return result

        return super().call(observed, classify=classify, call=call, what=what)

    def call_parts(
        self,
        keys: Sequence[K],
        send: Callable[[Sequence[K]], Mapping[K, Failure]],
        *,
        call: str | None = None,
        what: str = "",
    ) -> set[K]:
        def observed(parts: Sequence[K]) -> Mapping[K, Failure]:
            failures = send(parts)
            for failure in failures.values():
                self._failed(failure, call, part=True)
            return failures

        return super().call_parts(keys, observed, call=call, what=what)

    def _failed(self, failure: Failure | None, call: str | None, part: bool = False) -> None:
        if self.metrics is None:
            return
        status = _status(failure)
        if part:
            if status == THROTTLED:
                self.metrics.api_throttled.labels(self.service).inc()
        else:
            self.metrics.api_answer(self.service, status)
        if failure is not None and self.retryable(failure, call):
            self.metrics.api_retry(self.service, status)
