"""Prometheus metrics, read at scrape time.

The hot path only bumps plain integers on the pipeline's `Stats`; this collector turns them
(and the kernel's per-CPU counters in mr_stats) into metrics when Prometheus scrapes. Label
sets are closed: event type and CPU number, never pids or paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from moray.agent.events.types import EventType

log = logging.getLogger(__name__)


class SpoolFigures(Protocol):
    """What the collector reads of the control-plane client's event spool
    (agent/controlplane/spool.py ``SpoolStats``)."""

    records: int
    bytes: int
    dropped: int
    torn: int


@dataclass
class Stats:
    events: dict[str, int] = field(default_factory=lambda: {str(t): 0 for t in EventType})
    # events summarised by the kernel (repeat.count of the summaries read), by type
    aggregated: dict[str, int] = field(default_factory=lambda: {"open": 0})
    decode_errors: int = 0
    enrich_errors: int = 0
    output_errors: int = 0


class AgentCollector(Collector):
    def __init__(self, stats: Stats, queue_drops: Callable[[], int],
                 queue_depth: Callable[[], int], tree_size: Callable[[], int],
                 kernel_counters: Callable[[], dict[str, list[int]]],
                 tiers: Callable[[], Mapping[str, str]] = dict,
                 spool: Callable[[], SpoolFigures | None] = lambda: None,
                 queue_capacity: int = 0,
                 queue_drops_by_type: Callable[[], Mapping[str, int]] = dict) -> None:
        self.stats = stats
        self.queue_drops_by_type = queue_drops_by_type
        self.queue_capacity = queue_capacity
        self.tiers = tiers
        self.spool = spool
        self.queue_drops = queue_drops
        self.queue_depth = queue_depth
        self.tree_size = tree_size
        self.kernel_counters = kernel_counters

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ev = CounterMetricFamily("moray_events", "Events emitted, by type", labels=["type"])
        for t, n in self.stats.events.items():
            ev.add_metric([t], n)
        yield ev
        agg = CounterMetricFamily("moray_events_aggregated",
                                  "Events the kernel counted into a summary (an event's "
                                  "repeat.count) instead of writing each, by type",
                                  labels=["type"])
        for t, n in self.stats.aggregated.items():
            agg.add_metric([t], n)
        yield agg
        yield CounterMetricFamily("moray_decode_errors", "Kernel records that failed to decode",
                                  value=self.stats.decode_errors)
        yield CounterMetricFamily("moray_enrich_errors", "Errors while enriching events",
                                  value=self.stats.enrich_errors)
        yield CounterMetricFamily("moray_queue_drops",
                                  "Records dropped because the user-space queue was full",
                                  value=self.queue_drops())
        yield GaugeMetricFamily("moray_queue_depth", "Records waiting in the user-space queue",
                                value=self.queue_depth())
        if self.queue_capacity:
            yield GaugeMetricFamily("moray_queue_capacity",
                                    "Records the user-space queue holds before it drops",
                                    value=self.queue_capacity)
        yield GaugeMetricFamily("moray_process_tree_size",
                                "Processes in the tree (live and recently exited)",
                                value=self.tree_size())
        tiers = self.tiers()
        if tiers:  # none before the kernel's features are probed
            tier = GaugeMetricFamily("moray_enforcement_tier",
                                     "Enforcement tier per hook kind on this kernel (1 for the "
                                     "tier in use; tier \"none\": events only)",
                                     labels=["hook", "tier"])
            for hook, name in sorted(tiers.items()):
                tier.add_metric([hook, name], 1)
            yield tier
        spool = self.spool()
        if spool is not None:  # only with a control plane (--server)
            yield GaugeMetricFamily("moray_spool_records",
                                    "Events kept on disk for the control plane",
                                    value=spool.records)
            yield GaugeMetricFamily("moray_spool_bytes", "Bytes of the event spool",
                                    value=spool.bytes)
            sd = CounterMetricFamily("moray_spool_drops", "Events the spool lost (full: "
                                     "refused at its size cap; torn: unreadable records)",
                                     labels=["reason"])
            sd.add_metric(["full"], spool.dropped)
            sd.add_metric(["torn"], spool.torn)
            yield sd
        try:
            counters = self.kernel_counters()
        except OSError as err:
            log.warning("cannot read kernel counters: %s", err)
            return
        drops = CounterMetricFamily("moray_ringbuf_drops",
                                    "Records lost in the kernel: ring buffer full", labels=["cpu"])
        for cpu, n in enumerate(counters.get("rb_drop", [])):
            drops.add_metric([str(cpu)], n)
        yield drops
        kev = CounterMetricFamily("moray_kernel_records",
                                  "Records the kernel wrote to the ring buffer", labels=["cpu"])
        for cpu, n in enumerate(counters.get("events", [])):
            kev.add_metric([str(cpu)], n)
        yield kev
        yield CounterMetricFamily("moray_path_truncations",
                                  "Paths deeper than the kernel-side walk resolves",
                                  value=sum(counters.get("path_trunc", [])))
        lost = CounterMetricFamily("moray_events_lost",
                                   "Records lost, by record type and where (ring: the kernel's "
                                   "ring buffer full; queue: the user-space queue full)",
                                   labels=["type", "where"])
        for name, per_cpu in sorted(counters.items()):
            if name.startswith("lost:"):
                lost.add_metric([name[5:], "ring"], sum(per_cpu))
        for typ, n in sorted(self.queue_drops_by_type().items()):
            lost.add_metric([typ, "queue"], n)
        yield lost
        dc = CounterMetricFamily("moray_dircache_lookups",
                                 "Relative opens in a cacheable directory: decided by the "
                                 "kernel's directory cache (hit) or by a path walk (miss)",
                                 labels=["result"])
        dc.add_metric(["hit"], sum(counters.get("dircache_hit", [])))
        dc.add_metric(["miss"], sum(counters.get("dircache_miss", [])))
        yield dc
        ag = CounterMetricFamily("moray_aggregate",
                                 "The kernel's aggregation of repeated events: repeats "
                                 "counted instead of written (counted), first events written "
                                 "unaggregated because its map was full (full), summaries the "
                                 "ring refused and sent later (retry), events written in full "
                                 "because another task's open interleaved on the CPU (race)",
                                 labels=["what"])
        for what in ("counted", "full", "retry", "race"):
            ag.add_metric([what], sum(counters.get(f"agg_{what}", [])))
        yield ag



class ExportCollector(Collector):
    """The export filters' and the OTLP exporter's counters (agent/output/filters.py,
    agent/output/otlp.py); registered only when the agent has either. The filter label
    is the deny item's text as configured, or ``allow`` (closed: the configuration's)."""

    def __init__(self, filters: Any | None, otlp: Any | None) -> None:
        self.filters = filters
        self.otlp = otlp

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if self.filters is not None:
            f = CounterMetricFamily("moray_export_filtered",
                                    "Events and alerts an export filter kept from every "
                                    "output", labels=["filter"])
            for name, n in sorted(self.filters.dropped.items()):
                f.add_metric([name], n)
            yield f
        o = self.otlp
        if o is not None:
            yield CounterMetricFamily("moray_otlp_exported",
                                      "Events and alerts the OTLP collector accepted",
                                      value=o.exported)
            d = CounterMetricFamily("moray_otlp_dropped",
                                    "Events and alerts not sent over OTLP (queue: full "
                                    "queue or left at shutdown; failed: the exporter gave "
                                    "up after its retries)", labels=["reason"])
            d.add_metric(["queue"], o.dropped)
            d.add_metric(["failed"], o.failed)
            yield d
            m = CounterMetricFamily("moray_otlp_metric_exports",
                                    "OTLP metric exports, by result", labels=["result"])
            m.add_metric(["ok"], o.metric_exports)
            m.add_metric(["failed"], o.metric_failures)
            yield m
