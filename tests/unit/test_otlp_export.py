"""OTLP export (agent/output/otlp.py) to the real gRPC and HTTP receivers of
tests/helpers/otlp.py on 127.0.0.1; needs the otlp extra (skipped without it)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

pytest.importorskip("opentelemetry.sdk", reason="the otlp extra is not installed")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from moray.agent.output import otlp
from moray.agent.output.metrics import ExportCollector
from tests.helpers.otlp import Received, grpc_receiver, http_receiver
from tests.unit.test_otlp import ALERT, EVENT, WEB

Receiver = Callable[[], AbstractContextManager[tuple[str, Received]]]


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("moray_test_events", "events", ["type"], registry=reg).labels("open").inc(3)
    Gauge("moray_test_depth", "depth", registry=reg).set(7)
    return reg


@pytest.fixture(params=["grpc", "http"])
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[str, Received]]:
    make: Receiver = grpc_receiver if request.param == "grpc" else http_receiver
    with make() as got:
        yield got


@pytest.mark.parametrize("body", ["json", "map"])
def test_events_alerts_and_metrics_reach_a_real_receiver(
        receiver: tuple[str, Received], registry: CollectorRegistry, body: str) -> None:
    url, got = receiver
    x = otlp.OtlpExport(otlp.OtlpSettings(url, headers=("x-scope-orgid=tenant1",),
                                          insecure=url.startswith("grpc"),
                                          metrics_interval=0.2, delay=0.05, body=body),
                        "node-a", registry, version="9.9.9")
    x.start()
    try:
        x.event(EVENT)
        x.alert(ALERT)
        got.wait(lambda g: len(g.logs) >= 2)
        m = got.wait(lambda g: g.metrics.get("moray_test_events"))
        got.wait(lambda g: "moray_test_depth" in g.metrics)
    finally:
        x.close()
    ev, al = got.logs[0], got.logs[1]
    if body == "map":
        assert ev.body == otlp.body(EVENT)              # the object, as a map
    else:
        assert ev.body == json.dumps(EVENT, separators=(",", ":"))  # its JSON text
    assert ev.obj == {**EVENT, "container": {**WEB, "cgroup_id": ev.obj["container"][
        "cgroup_id"]}}
    assert ev.time_unix_nano == otlp.time_ns(EVENT["time"])
    assert (ev.severity_number, ev.severity_text) == (9, "INFO")
    assert ev.attributes == otlp.attributes(EVENT)
    assert (al.severity_number, al.severity_text) == (13, "WARNING")
    assert al.attributes["moray.rule"] == "Read sensitive file"
    assert al.obj["event"]["file"]["path"] == "/etc/shadow"
    for r in (ev.resource, got.metric_resource):
        assert (r["service.name"], r["service.version"], r["host.name"]) == (
            "moray-agent", "9.9.9", "node-a")
    assert m.sum.is_monotonic and m.sum.data_points[0].as_double == 3
    assert {kv.key: kv.value.string_value for kv in m.sum.data_points[0].attributes} == {
        "type": "open"}
    assert got.metrics["moray_test_depth"].gauge.data_points[0].as_double == 7
    assert all(h.get("x-scope-orgid") == "tenant1" for h in got.headers)
    assert (x.exported, x.dropped, x.failed) == (2, 0, 0) and x.metric_exports >= 1


def test_a_full_queue_drops_counts_and_never_blocks(registry: CollectorRegistry) -> None:
    # a collector that accepts connections and never answers: every export waits
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        x = otlp.OtlpExport(otlp.OtlpSettings(url, queue_records=100, batch=10, delay=0.01,
                                              timeout=1, metrics_interval=0),
                            "n", registry)
        x.start()
        for i in range(1000):                # returns at once whatever the collector does
            x.event({**EVENT, "n": i})
        assert x.queued + x.dropped == 1000 and x.dropped >= 800
        dropped = x.dropped
        for _ in range(5):                   # alerts still get in beyond the bound
            x.alert(ALERT)
        assert x.dropped == dropped
        x.close(timeout=0.5)             # gives up on the silent collector
    assert x.exported + x.failed + x.dropped == 1005   # every record accounted for
    reg = CollectorRegistry()
    reg.register(ExportCollector(None, x))
    text = generate_latest(reg).decode()
    assert f'moray_otlp_dropped_total{{reason="queue"}} {float(x.dropped)}' in text
    assert x.exported == 0


def test_agent_options_reach_the_exporter(tmp_path: Path) -> None:
    # --otlp-endpoint wired through the CLI's Config into the agent's start-up step
    from moray.agent.app import Agent, AgentError, Config

    agent = Agent(Config(proc=str(tmp_path), otlp_endpoint="grpc://127.0.0.1:1",
                         otlp_insecure=True, otlp_metrics_interval=0,
                         export_deny=("type:fork",)))
    try:
        agent.load_export()
        assert agent.otlp is not None and agent.otlp.target.insecure
        assert agent.export_filter is not None
    finally:
        agent.teardown()
    bad = Agent(Config(proc=str(tmp_path), export_deny=("proc.nmae = x",)))
    with pytest.raises(AgentError, match=r"did you mean proc\.name"):
        bad.load_export()
