"""packaging/monitoring: the Grafana dashboard and the Prometheus alerting rules use only
metrics the code exports (a renamed metric fails here), every expression parses as PromQL
(promql-parser: the Rust promql-parser crate, the Prometheus grammar), the rules have the
shape Prometheus loads, and the dashboard the fields Grafana's import needs. Where promtool
is on the PATH, `promtool check rules` and `promtool test rules` (the alerts firing on
exported series, moray-alerts.test.yaml) run too.

The exported names come from the collectors the code itself registers (the agent's, the
detection stage's, the server's, the gateway's, the kube-enforcer's), rendered through
prometheus_client as each /metrics handler does; the objects they read are built empty."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from moray.agent.controlplane.spool import EventSpool
from moray.agent.detect.stage import _Collector as DetectCollector
from moray.agent.output.filters import ExportFilter
from moray.agent.output.metrics import AgentCollector, ExportCollector, Stats
from moray.controlplane.gateway import metrics as gateway_metrics
from moray.controlplane.kubeenforcer.app import Enforcer
from moray.controlplane.kubeenforcer.config import EnforcerConfig
from moray.controlplane.server.metrics import ScanCollector, ServerMetrics

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "packaging" / "monitoring"
RULES = MONITORING / "moray-alerts.yaml"
RULES_TEST = MONITORING / "moray-alerts.test.yaml"  # promtool test rules
DASHBOARD = MONITORING / "moray-dashboard.json"
# series Prometheus itself adds to every target
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
            "summary": ("", "_count", "_sum", "_created"), "stateset": ("",),
            "unknown": ("",)}


def sample_names(families: Iterator[Metric]) -> set[str]:
    """Every series name a family can expose (a labelled metric with no child yet shows no
    sample, so names come from the family's type)."""
    return {f.name + s for f in families for s in SUFFIXES[f.type]}


def rendered(registry: CollectorRegistry) -> set[str]:
    """What the /metrics handler serves, parsed back."""
    return sample_names(text_string_to_metric_families(generate_latest(registry).decode()))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    tmp = tmp_path_factory.mktemp("spool")
    spool = EventSpool(tmp / "agent")
    # the agent registers its collector (and the detection stage's) on prometheus_client's
    # default REGISTRY, which also carries the process collector (process_*)
    agent = AgentCollector(Stats(), lambda: 0, lambda: 0, lambda: 0,
                           lambda: {"rb_drop": [0], "events": [0], "path_trunc": [0]},
                           tiers=lambda: {"exec": "lsm-deny", "file": "none"},
                           spool=spool.stats, queue_capacity=4096)
    stage = SimpleNamespace(
        detector=SimpleNamespace(alerts={"r": 1}, errors=0, rules=SimpleNamespace(rules=[])),
        outputs=[])
    detect = DetectCollector(stage)  # type: ignore[arg-type]
    # with export filters and OTLP export (agent/output/filters.py, otlp.py)
    otlp = SimpleNamespace(exported=0, dropped=0, failed=0, metric_exports=0,
                           metric_failures=0)
    export = ExportCollector(ExportFilter(deny=["type:fork"]), otlp)
    REGISTRY.register(agent)
    REGISTRY.register(detect)
    REGISTRY.register(export)
    try:
        agent_names = rendered(REGISTRY)
    finally:
        REGISTRY.unregister(agent)
        REGISTRY.unregister(detect)
        REGISTRY.unregister(export)

    server = ServerMetrics()
    server.registry.register(ScanCollector(lambda: {}, lambda: {"queued": {}, "errors": {}}))

    upstream = SimpleNamespace(up=True, links=0, fanout=SimpleNamespace(agents={}), dropped=0)
    forwarder = SimpleNamespace(sent=0, stored=0, duplicates=0, spooled_total=0)
    gw_spool = EventSpool(tmp / "gateway")
    gateway = gateway_metrics.registry(upstream, forwarder, gw_spool)  # type: ignore[arg-type]

    enforcer = Enforcer(EnforcerConfig(server="https://127.0.0.1:1", token="t"))
    enforcer.certs = SimpleNamespace(expires=0.0, renewed=0, failed=0)  # type: ignore[assignment]
    try:
        return {"agent": agent_names, "server": rendered(server.registry),
                "gateway": rendered(gateway), "kube": rendered(enforcer.registry)}
    finally:
        spool.close()
        gw_spool.close()


def selectors(expr: str) -> set[str]:
    """Metric names of every vector selector in a PromQL expression (parsed: a syntax error
    raises ValueError)."""
    names: list[str] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.append(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return set(names)


def grafana_expr(expr: str) -> str:
    """A dashboard expression as Grafana sends it (variables inside label values are
    strings to PromQL; the range variable is not)."""
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    out = []
    for p in dashboard()["panels"]:
        out.extend(t["expr"] for t in p.get("targets", []))
    return out


def variable_metrics() -> set[str]:
    names = set()
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+)(\{.*\})?, *\w+\)", v["query"]["query"])
            assert m, v["query"]
            names.add(m.group(1))
    return names


def all_names(exported: dict[str, set[str]]) -> set[str]:
    return set().union(*exported.values()) | SYNTHETIC


def test_collectors_export_the_metric_families(exported: dict[str, set[str]]) -> None:
    # the collection itself is sound: each component shows its own families
    assert {"moray_events_total", "moray_ringbuf_drops_total", "moray_enforcement_tier",
            "moray_spool_records", "moray_alert_output_drops_total",
            "process_resident_memory_bytes"} <= exported["agent"]
    assert {"moray_agents_connected", "moray_policy_push_latency_seconds_bucket",
            "moray_scan_jobs", "process_cpu_seconds_total"} <= exported["server"]
    assert {"moray_gateway_linked", "moray_gateway_events_sent_total"} <= exported["gateway"]
    assert "moray_kube_tls_cert_expiry_timestamp_seconds" in exported["kube"]


def test_rules_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    known = all_names(exported)
    used: set[str] = set()
    for r in rules():
        names = selectors(r["expr"])
        assert names, r["alert"]
        missing = names - known
        assert not missing, f"{r['alert']}: {sorted(missing)} not exported"
        used |= names
    # the must-haves are covered: agent down, drops, tiers, acks, spool
    assert {"up", "moray_ringbuf_drops_total", "moray_queue_drops_total",
            "moray_enforcement_tier", "moray_policy_pushes_pending",
            "moray_spool_records", "moray_gateway_spool_records"} <= used


def test_dashboard_uses_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    known = all_names(exported)
    used: set[str] = set()
    for expr in dashboard_exprs():
        names = selectors(grafana_expr(expr))
        missing = names - known
        assert not missing, f"{expr}: {sorted(missing)} not exported"
        used |= names
    assert not variable_metrics() - known
    # every moray family of the agent, the server and the gateway is on the dashboard,
    # apart from the ones listed (a new metric gets a panel or a line here)
    not_shown = {"moray_policy_push_latency_seconds_count", "moray_policy_push_latency_seconds_sum",
                 "moray_http_request_duration_seconds_bucket",
                 "moray_http_request_duration_seconds_count",
                 "moray_http_request_duration_seconds_sum",
                 "moray_grpc_request_duration_seconds_sum",
                 "moray_scan_jobs_queued_total", "moray_scan_scheduler_errors_total"}
    families = {n for c in ("agent", "server", "gateway") for n in exported[c]
                if n.startswith("moray_") and not n.endswith("_created")}
    assert families - used - not_shown == set()


def test_rules_have_the_shape_prometheus_loads() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    groups = doc["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    seen = set()
    for g in groups:
        assert set(g) <= {"name", "interval", "rules", "limit"}
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                              "annotations"}, r
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", r["alert"])
            assert r["alert"] not in seen
            seen.add(r["alert"])
            if "for" in r:
                assert re.fullmatch(r"(\d+[smhdwy])+", r["for"]), r["for"]
            assert r["labels"]["severity"] in {"critical", "warning", "info"}
            assert set(r["annotations"]) >= {"summary", "description"}
            for text in r["annotations"].values():
                assert text.count("{{") == text.count("}}"), text
    assert len(seen) >= 10


def test_rule_tests_feed_exported_series(exported: dict[str, set[str]]) -> None:
    """The promtool unit tests' input series are named as the code exports them, and every
    alert they test exists."""
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == [RULES.name]
    alerts = {r["alert"] for r in rules()}
    for t in doc["tests"]:
        for s in t["input_series"]:
            assert selectors(s["series"]) <= all_names(exported), s["series"]
        for a in t["alert_rule_test"]:
            assert a["alertname"] in alerts


@pytest.mark.parametrize("args", [["check", "rules", str(RULES)],
                                  ["test", "rules", str(RULES_TEST)]], ids=["check", "test"])
def test_rules_with_promtool(args: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (optional: Debian's prometheus package)")
    out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                         cwd=MONITORING)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_imports_into_grafana() -> None:
    d = dashboard()
    assert d["title"] and d["uid"] and len(d["uid"]) <= 40
    assert d["schemaVersion"] >= 39
    assert "id" not in d or d["id"] is None  # an id would clash on import
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] in {"row", "timeseries", "stat", "table"}
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["targets"]
        # no hard-coded data source: the panel and each query follow the variable
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert t["expr"] and t["refId"]
        for var in re.findall(r"\$(\w+)", " ".join(t["expr"] for t in p["targets"])):
            assert var in variables or var.startswith("__"), var
    text = DASHBOARD.read_text()
    assert '"uid": "${datasource}"' in text
    assert not re.search(r'"uid": "(?!\$\{datasource\}|moray-overview|-- Grafana --)', text)


def test_agent_tiers_and_spool(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path)
    try:
        reg = CollectorRegistry()
        tiers = {"exec": "lsm-deny", "network": "none"}
        reg.register(AgentCollector(Stats(), lambda: 3, lambda: 0, lambda: 0, lambda: {},
                                    tiers=lambda: tiers, spool=spool.stats,
                                    queue_capacity=4096))
        text = generate_latest(reg).decode()
    finally:
        spool.close()
    assert 'moray_enforcement_tier{hook="exec",tier="lsm-deny"} 1.0' in text
    assert 'moray_enforcement_tier{hook="network",tier="none"} 1.0' in text
    assert "moray_spool_records 0.0" in text
    assert 'moray_spool_drops_total{reason="full"} 0.0' in text
    assert "moray_queue_drops_total 3.0" in text
    assert "moray_queue_capacity 4096.0" in text
    # before the kernel probe and without a control plane: neither family
    bare = CollectorRegistry()
    bare.register(AgentCollector(Stats(), lambda: 0, lambda: 0, lambda: 0, lambda: {}))
    text = generate_latest(bare).decode()
    assert "moray_enforcement_tier" not in text and "moray_spool" not in text


def test_agent_metrics_are_documented(exported: dict[str, set[str]]) -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    undocumented = {n for n in exported["agent"] if n.startswith("moray_")
                    and not n.endswith("_created") and f"`{n}" not in text}
    assert not undocumented, f"add to docs/monitoring.md: {sorted(undocumented)}"
