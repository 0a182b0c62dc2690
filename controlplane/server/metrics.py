"""The server's Prometheus metrics (served at /metrics on the HTTP port). Label sets are
closed: statuses and RPC names, never agent ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

JOB_STATUSES = ("queued", "running", "done", "failed")


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
