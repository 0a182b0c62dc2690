"""The gateway's Prometheus metrics, read at scrape time from the objects that own the
state (nothing is counted twice): served with /healthz and /readyz on ``--metrics-port``
by the agent's own HTTP endpoint (agent/output/health.py).

- ``moray_gateway_linked``: 1 while the link to the server is up;
- ``moray_gateway_links_total``: links opened (a reconnect adds one);
- ``moray_gateway_agents``: agents with an open stream here;
- ``moray_gateway_spool_records`` / ``_bytes``: events kept for the server (its outage);
- ``moray_gateway_events_sent_total`` / ``_stored_total`` / ``_duplicates_total``: events
  sent upstream and what the server said of them; ``_spooled_total``: taken into the spool;
- ``moray_gateway_upstream_dropped_total``: policy acks and heartbeats dropped on a full
  upstream queue.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from moray.agent.controlplane.spool import EventSpool
from moray.controlplane.gateway.forwarder import Forwarder
from moray.controlplane.gateway.upstream import Upstream


class GatewayCollector(Collector):
    def __init__(self, upstream: Upstream, forwarder: Forwarder, spool: EventSpool) -> None:
        self.upstream, self.forwarder, self.spool = upstream, forwarder, spool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up, fwd, spool = self.upstream, self.forwarder, self.spool.stats()
        yield GaugeMetricFamily("moray_gateway_linked", "link to the server up",
                                value=float(up.up))
        yield CounterMetricFamily("moray_gateway_links", "links opened", value=up.links)
        yield GaugeMetricFamily("moray_gateway_agents", "agents with an open stream",
                                value=len(up.fanout.agents))
        yield GaugeMetricFamily("moray_gateway_spool_records", "events kept for the server",
                                value=spool.records)
        yield GaugeMetricFamily("moray_gateway_spool_bytes", "bytes kept for the server",
                                value=spool.bytes)
        for name, value, text in (("sent", fwd.sent, "events sent to the server"),
                                  ("stored", fwd.stored, "events the server stored"),
                                  ("duplicates", fwd.duplicates, "events already stored"),
                                  ("spooled", fwd.spooled_total, "events taken into the spool")):
            yield CounterMetricFamily(f"moray_gateway_events_{name}", text, value=value)
        yield CounterMetricFamily("moray_gateway_upstream_dropped",
                                  "acks and heartbeats dropped on a full queue",
                                  value=up.dropped)


def registry(upstream: Upstream, forwarder: Forwarder, spool: EventSpool) -> CollectorRegistry:
    """A registry of the gateway's metrics and the process's own (CPU, memory, fds)."""
    from prometheus_client import ProcessCollector

    reg = CollectorRegistry()
    reg.register(GatewayCollector(upstream, forwarder, spool))
    ProcessCollector(registry=reg)
    return reg
