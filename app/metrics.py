"""Prometheus metrics: what this process ingested, refused, wrote and sent.

Two kinds live here. Counters and histograms that code increments as things happen are
module-level objects (`EVENTS_ACCEPTED`, `ALERTS_SENT`, …): import one and call
`.labels(…).inc()` or `.observe(…)`. They belong to no registry of their own, so any
number of apps built in one process (tests do) can each expose them; they count for the
whole process, which is what a scrape of that process should see. Values that already
exist elsewhere (the writer's queue, the pub/sub counters of `PubSubStats`) are read at
scrape time by a collector made for the runtime being scraped, never copied.

`render` builds a fresh registry for one scrape. With `PROMETHEUS_MULTIPROC_DIR` set (read
by prometheus-client itself, before any metric exists), counters and histograms are kept
in files there and a scrape sums them over every worker of `errorgraph serve --workers N`;
the live values read from a runtime are then those of the worker that answered, with a
`pid` label.

Labels stay few and bounded: a dialect is one of the modules in `rest_compat/` (or the
`dialect` an `EventIn` was given by the code that built it), a reason is the name of a
domain error or of a status code, a route is a route's template, never a raw path.
"""

from __future__ import annotations

import os
import re
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from app.admission import BodyBudget
    from app.pubsub import PubSub
    from app.services.ingest import BatchWriter

# --- Ingest ---------------------------------------------------------------------------

EVENTS_ACCEPTED = Counter(
    "errorgraph_events_accepted",
    "Events committed and acknowledged, by the dialect that sent them (repeats of a stored "
    "event_id included: they are acknowledged too).",
    ["dialect"],
    registry=None,
)
EVENTS_REJECTED = Counter(
    "errorgraph_events_rejected",
    "Submissions to a dialect's ingest endpoints answered with an error, by dialect and "
    "reason (the domain error, or the status when the dialect answered by itself).",
    ["dialect", "reason"],
    registry=None,
)
BATCH_EVENTS = Histogram(
    "errorgraph_writer_batch_events",
    "Events per transaction of the batch writer.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000),
    registry=None,
)
BATCH_COMMIT_SECONDS = Histogram(
    "errorgraph_writer_commit_seconds",
    "Time from the start of a batch's transaction to its commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)

# --- HTTP -----------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "errorgraph_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=None,
)
HTTP_REQUEST_SECONDS = Histogram(
    "errorgraph_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template.",
    ["method", "route"],
    registry=None,
)

# --- Alerts and retention (incremented by app.services.alerts and the cleanup task) ----

ALERTS_SENT = Counter(
    "errorgraph_alerts_sent",
    "Alert messages delivered, by channel (email, postmark, webhook, slack).",
    ["channel"],
    registry=None,
)
ALERTS_FAILED = Counter(
    "errorgraph_alerts_failed",
    "Alert send attempts that failed, by channel and whether the delivery will be retried "
    "(final=false) or was given up (final=true).",
    ["channel", "final"],
    registry=None,
)
RETENTION_RUNS = Counter(
    "errorgraph_retention_runs",
    "Retention cleanup runs, by how they ended: ok, failed (nothing deleted), or skipped "
    "(another process holds the cleanup lock).",
    ["status"],
    registry=None,
)
RETENTION_DELETED = Counter(
    "errorgraph_retention_deleted",
    "Rows removed by retention cleanup, by kind (events, groups).",
    ["kind"],
    registry=None,
)
RETENTION_EXPORTED_EVENTS = Counter(
    "errorgraph_retention_exported_events",
    "Events written to an export destination before cleanup deleted them.",
    registry=None,
)

PROCESS_METRICS: tuple[Collector, ...] = (
    EVENTS_ACCEPTED,
    EVENTS_REJECTED,
    BATCH_EVENTS,
    BATCH_COMMIT_SECONDS,
    HTTP_REQUESTS,
    HTTP_REQUEST_SECONDS,
    ALERTS_SENT,
    ALERTS_FAILED,
    RETENTION_RUNS,
    RETENTION_DELETED,
    RETENTION_EXPORTED_EVENTS,
)


# A metric's child for a set of label values, kept once found: `.labels()` costs a few
# microseconds (keyword handling, a lock) on every request otherwise, and label values here
# are bounded (see the module's docstring), so the cache is too.
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Counter | Histogram, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def count_accepted(dialects: Iterable[str]) -> None:
    """One accepted event per item of `dialects` (an event's `dialect`)."""
    for dialect, count in Tally(dialects).items():
        _child(EVENTS_ACCEPTED, dialect).inc(count)


def observe_batch(*, events: int, seconds: float) -> None:
    BATCH_EVENTS.observe(events)
    BATCH_COMMIT_SECONDS.observe(seconds)


# --- Why a request was refused ----------------------------------------------------------


@dataclass
class RequestOutcome:
    """What the code answering one request learnt about it, for the request's metrics."""

    refusal: str | None = None


_OUTCOME: ContextVar[RequestOutcome | None] = ContextVar("errorgraph_request_outcome", default=None)

# The reason a status stands for when no domain error named one (a dialect answering a
# validation error itself, the framework's 404 and 405): the same words as the errors'.
_REASON_BY_STATUS = {
    400: "invalid_input",
    401: "invalid_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "quota_exceeded",
    503: "unavailable",
}


@contextmanager
def request_outcome() -> Iterator[RequestOutcome]:
    """Collect what `note_refusal` is told while one request is answered."""
    outcome = RequestOutcome()
    token = _OUTCOME.set(outcome)
    try:
        yield outcome
    finally:
        _OUTCOME.reset(token)


def note_refusal(error: type[BaseException]) -> None:
    """The request being answered is refused because of `error` (a domain error class)."""
    outcome = _OUTCOME.get()
    if outcome is not None:
        outcome.refusal = _snake(error.__name__)


def refusal_reason(status: int, outcome: RequestOutcome | None = None) -> str:
    if outcome is not None and outcome.refusal:
        return outcome.refusal
    if status in _REASON_BY_STATUS:
        return _REASON_BY_STATUS[status]
    return "internal_error" if status >= 500 else f"http_{status}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(
    *,
    method: str,
    route: str | None,
    status: int,
    seconds: float,
    submission_dialect: str | None = None,
    outcome: RequestOutcome | None = None,
) -> None:
    """Count one answered request; `submission_dialect` when it went to an ingest endpoint."""
    method = method if method in _METHODS else "OTHER"
    route = route or "unmatched"
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_REQUEST_SECONDS, method, route).observe(seconds)
    if submission_dialect is not None and status >= 400:
        reason = refusal_reason(status, outcome)
        _child(EVENTS_REJECTED, submission_dialect, reason).inc()


# --- What a runtime holds, read at scrape time ----------------------------------------


class RuntimeCollector(Collector):
    """The writer's queue, the admission budget and the pub/sub counters of one running
    server."""

    def __init__(
        self,
        *,
        writer: BatchWriter,
        pubsub: PubSub,
        admission: BodyBudget | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self._writer = writer
        self._pubsub = pubsub
        self._admission = admission
        self._labels = labels or {}

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=list(self._labels))
        family.add_metric(list(self._labels.values()), value)
        return family

    def _counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=list(self._labels))
        family.add_metric(list(self._labels.values()), value)
        return family

    def collect(self) -> Iterator[Metric]:
        stats = self._pubsub.stats
        yield self._gauge(
            "errorgraph_writer_queue_depth",
            "Submissions waiting for the batch writer.",
            self._writer.queue_depth,
        )
        if self._admission is not None:
            # Requests waiting here while the writer's queue is short would say the budget
            # (MAX_BODY_BYTES_IN_FLIGHT) is too small for this process's clients.
            yield self._gauge(
                "errorgraph_admission_bytes_held",
                "Request body bytes this process is working on (MAX_BODY_BYTES_IN_FLIGHT).",
                self._admission.held,
            )
            yield self._gauge(
                "errorgraph_admission_requests_waiting",
                "Requests waiting for room in MAX_BODY_BYTES_IN_FLIGHT, bodies unread.",
                self._admission.waiting,
            )
        yield self._gauge(
            "errorgraph_subscriptions_open",
            "Live subscriptions (GraphQL subscriptions, alert listeners) in this process.",
            stats.subscribers + stats.joined,
        )
        yield self._gauge(
            "errorgraph_pubsub_connected",
            "1 while the pub/sub broker is connected.",
            1 if self._pubsub.connected else 0,
        )
        yield self._counter(
            "errorgraph_pubsub_published",
            "Messages published to the pub/sub broker.",
            stats.published,
        )
        yield self._counter(
            "errorgraph_pubsub_publish_failures",
            "Messages that could not be published (broker away or failing).",
            stats.publish_failures,
        )
        yield self._counter(
            "errorgraph_pubsub_delivered",
            "Messages handed to this process's subscribers.",
            stats.delivered,
        )
        yield self._counter(
            "errorgraph_pubsub_dropped",
            "Messages dropped because a subscriber fell too far behind.",
            stats.dropped,
        )
        yield self._counter(
            "errorgraph_pubsub_reconnects",
            "Reconnections to the pub/sub broker.",
            stats.reconnects,
        )


def multiprocess_dir() -> str | None:
    """Where prometheus-client keeps the values of all workers, when it does."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(
    *,
    writer: BatchWriter,
    pubsub: PubSub,
    admission: BodyBudget | None = None,
    accept: str | None = None,
) -> tuple[bytes, str]:
    """One scrape: the exposition (text format, or OpenMetrics when `accept` asks for it)
    and its content type."""
    registry = CollectorRegistry(auto_describe=True)
    if multiprocess_dir():
        MultiProcessCollector(registry)
        registry.register(
            RuntimeCollector(
                writer=writer,
                pubsub=pubsub,
                admission=admission,
                labels={"pid": str(os.getpid())},
            )
        )
    else:
        for metric in PROCESS_METRICS:
            registry.register(metric)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(RuntimeCollector(writer=writer, pubsub=pubsub, admission=admission))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
