"""The server's Prometheus metrics (served at /metrics on the HTTP port). Label sets are
closed: statuses, route templates and RPC names, never agent ids or raw paths. The
process collector (CPU seconds, resident memory, open fds, start time: ``process_*``)
is registered on the server's own registry."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

JOB_STATUSES = ("queued", "running", "done", "failed")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 120, 600, 3600)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.agents_connected = Gauge("moray_agents_connected",
                                      "Agents with an open policy stream", registry=r)
        self.policy_push_latency = Histogram(
            "moray_policy_push_latency_seconds",
            "From a policy version's creation to an agent's acknowledgement",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.policy_acks = Counter("moray_policy_acks_total", "Policy acknowledgements",
                                   ["status"], registry=r)
        self.policy_pushes_pending = Gauge(
            "moray_policy_pushes_pending", "Policy messages sent and not yet acknowledged",
            registry=r)
        self.events_ingested = Counter("moray_events_ingested_total",
                                       "Events stored (first delivery)", registry=r)
        self.events_duplicate = Counter(
            "moray_events_duplicate_total",
            "Events received again after a replay and not stored twice", registry=r)
        self.events_rejected = Counter(
            "moray_events_rejected_total",
            "Events refused at ingest and not stored (reason: payload_not_json, "
            "payload_too_large)", ["reason"], registry=r)
        self.policy_acks_refused = Counter(
            "moray_policy_acks_refused_total",
            "Policy acknowledgements not stored (unknown agent or policy, a version never "
            "issued, an unknown status)", registry=r)
        self.event_batches_inflight = Gauge(
            "moray_event_batches_inflight", "Event batches received and not yet committed",
            registry=r)
        self.rpc_refused = Counter("moray_agent_rpc_refused_total",
                                   "Agent RPCs refused (unknown or revoked identity)",
                                   ["reason"], registry=r)
        self.enrollments = Counter("moray_enrollments_total", "Enrolment attempts",
                                   ["result"], registry=r)
        self.http_requests = Counter("moray_http_requests_total", "REST requests",
                                     ["method", "status"], registry=r)
        self.http_duration = Histogram(
            "moray_http_request_duration_seconds",
            "REST request duration by route template (unmatched paths: route \"other\")",
            ["method", "route"], buckets=DURATION_BUCKETS, registry=r)
        self.grpc_duration = Histogram(
            "moray_grpc_request_duration_seconds",
            "gRPC call duration by method (a stream: its whole life) and status code",
            ["method", "code"], buckets=DURATION_BUCKETS, registry=r)
        self.db_statements = Counter(
            "moray_db_statements_total", "SQL statements this process sent to the database",
            registry=r)
        self.policy_snapshots = Counter(
            "moray_policy_snapshots_total",
            "Policy sets read by the watcher and pushed to every stream (one per change)",
            registry=r)
        self.change_listener_up = Gauge(
            "moray_change_listener_up",
            "1 while the PostgreSQL LISTEN connection of the change watcher is up", registry=r)
        self.events_dropped = Counter(
            "moray_events_dropped_total",
            "Stored events deleted by retention, oldest first (reason: age or size)",
            ["reason"], registry=r)
        for reason in ("age", "size"):
            self.events_dropped.labels(reason)


class ScanCollector(Collector):
    """Scan jobs per status, read from the store at scrape time, and the scan scheduler's
    counters (``queued`` per reason: registry, image, rescan; ``errors``: failed listings
    and failed ticks)."""

    def __init__(self, job_counts: Callable[[], Mapping[str, int]],
                 scheduler: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self.job_counts = job_counts
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        counts = self.job_counts()
        jobs = GaugeMetricFamily("moray_scan_jobs", "Scan jobs in the store by status",
                                 labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        stats = self.scheduler()
        queued = CounterMetricFamily("moray_scan_jobs_queued",
                                     "Scan jobs queued by the server's scheduler",
                                     labels=["reason"])
        for reason, n in sorted(stats["queued"].items()):
            queued.add_metric([reason], n)
        yield queued
        errors = CounterMetricFamily("moray_scan_scheduler_errors",
                                     "Registry listings and scheduler ticks that failed",
                                     labels=["kind"])
        for kind, n in sorted(stats["errors"].items()):
            errors.add_metric([kind], n)
        yield errors


class GrpcTimer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Times every gRPC call into ``histogram`` by method name (the handler's own: a call
    to an unknown method has no handler and is not counted) and final status code."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    async def intercept_service(
            self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = str(details.method).rsplit("/", 1)[-1]
        kind = ("stream" if handler.request_streaming else "unary") + "_" + (
            "stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        timed = self._wrap(behavior, method)
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(timed, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _observe(self, method: str, context: Any, start: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None
        name = getattr(code, "name", None) or ("UNKNOWN" if failed else "OK")
        self.histogram.labels(method, name).observe(time.perf_counter() - start)

    def _wrap(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                start, failed = time.perf_counter(), True
                try:
                    async for response in behavior(request, context):
                        yield response
                    failed = False
                finally:
                    self._observe(method, context, start, failed)
            return stream

        async def call(request: Any, context: Any) -> Any:
            start, failed = time.perf_counter(), True
            try:
                result = await behavior(request, context)
                failed = False
                return result
            finally:
                self._observe(method, context, start, failed)
        return call
