"""Prometheus metrics, read at scrape time.

The hot path only bumps plain integers on the pipeline's `Stats`; this collector turns them
(and the kernel's per-CPU counters in mr_stats) into metrics when Prometheus scrapes. Label
sets are closed: event type and CPU number, never pids or paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from moray.agent.events.types import EventType

log = logging.getLogger(__name__)


@dataclass
class Stats:
    events: dict[str, int] = field(default_factory=lambda: {str(t): 0 for t in EventType})
    decode_errors: int = 0
    enrich_errors: int = 0
    output_errors: int = 0


class AgentCollector(Collector):
    def __init__(self, stats: Stats, queue_drops: Callable[[], int],
                 queue_depth: Callable[[], int], tree_size: Callable[[], int],
                 kernel_counters: Callable[[], dict[str, list[int]]]) -> None:
        self.stats = stats
        self.queue_drops = queue_drops
        self.queue_depth = queue_depth
        self.tree_size = tree_size
        self.kernel_counters = kernel_counters

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ev = CounterMetricFamily("moray_events", "Events emitted, by type", labels=["type"])
        for t, n in self.stats.events.items():
            ev.add_metric([t], n)
        yield ev
        yield CounterMetricFamily("moray_decode_errors", "Kernel records that failed to decode",
                                  value=self.stats.decode_errors)
        yield CounterMetricFamily("moray_enrich_errors", "Errors while enriching events",
                                  value=self.stats.enrich_errors)
        yield CounterMetricFamily("moray_queue_drops",
                                  "Records dropped because the user-space queue was full",
                                  value=self.queue_drops())
        yield GaugeMetricFamily("moray_queue_depth", "Records waiting in the user-space queue",
                                value=self.queue_depth())
        yield GaugeMetricFamily("moray_process_tree_size",
                                "Processes in the tree (live and recently exited)",
                                value=self.tree_size())
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

