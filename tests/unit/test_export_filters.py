"""Export filters (agent/output/filters.py) and the router applying them before every
output (agent/pipeline/route.py)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from moray.agent.output.filters import ExportFilter, FilterError
from moray.agent.output.metrics import ExportCollector
from moray.agent.pipeline.route import Router
from moray.cli import parse


def event(etype: str = "open", path: str = "/etc/hosts", container: dict[str, Any] | None
          = None, binary: str = "/usr/bin/cat") -> dict[str, Any]:
    e: dict[str, Any] = {"type": etype, "time": "2026-12-07T10:00:00.000000001Z",
                         "node": "n1",
                         "process": {"pid": 10, "tid": 10, "exec_id": "10:1", "binary": binary,
                                     "args": ["cat", path], "uid": 0, "name": "cat"},
                         "parent": None, "container": container}
    if etype == "open":
        e["file"] = {"path": path, "flags": ["O_RDONLY"], "access": "read", "error": None}
    return e


WEB = {"id": "c0ffee", "name": "web", "image": "docker.io/library/nginx:1.27",
       "runtime": "docker", "labels": {"app": "web"},
       "pod": {"namespace": "prod", "name": "web-1", "uid": "u1", "labels": {"tier": "front"}}}
DB = {"id": "d00d", "name": "db", "image": "postgres:16", "runtime": "docker", "labels": {},
      "pod": None}


def alert(rule: str = "Read sensitive file", priority: str = "WARNING", severity: int = 4,
          ev: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "alert", "rule": rule, "priority": priority, "severity": severity,
            "event": ev or event(path="/etc/shadow")}


@pytest.mark.parametrize(("item", "hits", "misses"), [
    ("type:open", [event()], [event("exec"), alert()]),
    ("type:exec,alert", [event("exec"), alert()], [event()]),
    ("rule:Read sensitive file", [alert()], [alert("Other"), event()]),
    ("priority:warning,ERROR", [alert(), alert(priority="ERROR", severity=3)],
     [alert(priority="NOTICE", severity=5), event()]),
    ("min-priority:WARNING", [alert(), alert(priority="CRITICAL", severity=2)],
     [alert(priority="NOTICE", severity=5), event()]),
    ("container:web", [event(container=WEB), alert(ev=event(container=WEB))],
     [event(container=DB), event()]),
    ("container:d00d", [event(container=DB)], [event(container=WEB), event()]),
    ("image:*nginx*", [event(container=WEB)], [event(container=DB), event()]),
    ("namespace:prod", [event(container=WEB)], [event(container=DB), event()]),
    ("label:tier=front", [event(container=WEB)], [event(container=DB)]),
    ("label:app=web", [event(container=WEB)], [event(container=DB)]),
    ("evt.type = open and file.path startswith /proc/", [event(path="/proc/1/stat")],
     [event(path="/etc/hosts"), event("exec"), alert(ev=event(path="/proc/1/stat"))]),
    ("container.name = web or proc.binary_name = cat", [event(container=WEB), event()],
     [event(container=DB, binary="/bin/ls")]),
])
def test_each_kind_matches_what_it_says(item: str, hits: list[dict[str, Any]],
                                        misses: list[dict[str, Any]]) -> None:
    deny = ExportFilter(deny=[item])
    allow = ExportFilter(allow=[item])
    for e in hits:
        assert not deny.keep(e) and allow.keep(e), (item, e)
    for e in misses:
        assert deny.keep(e) and not allow.keep(e), (item, e)
    assert deny.dropped == {item: len(hits)}
    assert allow.dropped == {"allow": len(misses)}


def test_deny_wins_and_counts_per_filter() -> None:
    f = ExportFilter(allow=["type:open", "type:alert"],
                     deny=["evt.type = open and file.path startswith /proc/", "container:db"])
    objs = [event(), event(path="/proc/self/status"), event(path="/proc/1/maps"),
            event(container=DB), event("exec"), alert(), alert(ev=event(container=DB))]
    kept = [o for o in objs if f.keep(o)]
    assert kept == [objs[0], objs[5]]
    assert f.dropped == {"evt.type = open and file.path startswith /proc/": 2,
                         "container:db": 2, "allow": 1}
    reg = CollectorRegistry()
    reg.register(ExportCollector(f, None))
    text = generate_latest(reg).decode()
    assert 'moray_export_filtered_total{filter="container:db"} 2.0' in text
    assert 'moray_export_filtered_total{filter="allow"} 1.0' in text


@pytest.mark.parametrize(("option", "item", "message"), [
    ("--export-deny", "evt.type = open and proc.nmae = cat",
     "--export-deny 'evt.type = open and proc.nmae = cat': unknown field or macro "
     "'proc.nmae' (did you mean proc.name?) (at column 21)"),
    ("--export-allow", "evt.type = opne", "unknown event type 'opne'"),
    ("--export-deny", "typ:open", "unknown filter kind 'typ'"),
    ("--export-deny", "type:opne", "unknown event type 'opne'"),
    ("--export-deny", "min-priority:LOUD", "unknown priority 'LOUD'"),
    ("--export-deny", "label:novalue", "label: wants KEY=VALUE"),
    ("--export-deny", "image:", "image: needs a value"),
    ("--export-deny", "  ", "empty filter"),
])
def test_invalid_filters_refuse_with_the_option_and_the_reason(option: str, item: str,
                                                               message: str) -> None:
    kw = {"deny": [item]} if option == "--export-deny" else {"allow": [item]}
    with pytest.raises(FilterError) as err:
        ExportFilter(**kw)
    assert str(err.value).startswith(option)
    assert message in str(err.value)


class Sink:
    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def write(self, e: dict[str, Any]) -> None:
        self.got.append(e)

    def flush(self) -> None: ...
    def close(self) -> None: ...


class Spool:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def submit(self, events: list[Any], lines: bytearray) -> None:
        self.events += events


class Siem:
    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def publish(self, a: dict[str, Any], encoded: bytes | None = None) -> None:
        self.got.append(a)

    def close(self, timeout: float = 2.0) -> None: ...


class Export:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []

    def event(self, e: dict[str, Any]) -> None:
        self.events.append(e)

    def alert(self, a: dict[str, Any]) -> None:
        self.alerts.append(a)


@pytest.mark.parametrize("enrolled", [False, True])
def test_router_filters_before_every_output(enrolled: bool) -> None:
    f = ExportFilter(deny=["evt.type = open and file.path startswith /proc/",
                           "rule:Noisy"])
    sink, spool, siem, otlp = Sink(), Spool(), Siem(), Export()
    r = Router(sink, [siem], spool if enrolled else None, keep=f.keep, exports=[otlp])
    kept, proc = event(), event(path="/proc/1/stat")
    r.event(kept)
    r.event(proc)
    good, noisy = alert(), alert("Noisy")
    r.alerts([good, noisy])
    r.flush()
    assert sink.got == [kept, good]
    assert siem.got == [good]
    assert otlp.events == [kept] and otlp.alerts == [good]
    if enrolled:
        assert spool.events == [kept, good]
    assert f.dropped == {"evt.type = open and file.path startswith /proc/": 1,
                         "rule:Noisy": 1}


def test_options_and_config_file(tmp_path: Any) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("export-deny: ['type:fork', 'evt.type = open and file.path startswith "
                   "/proc/']\nexport-allow: type:open\notlp-endpoint: grpc://c:4317\n"
                   "otlp-insecure: true\notlp-metrics-interval: 15\n"
                   "otlp-headers: [authorization=Bearer x]\notlp-body: map\n")
    a = parse(["run", "--config", str(cfg), "--export-deny", "container:db"], "moray-agent")
    assert a.export_deny == ["type:fork", "evt.type = open and file.path startswith /proc/",
                             "container:db"]
    assert a.export_allow == ["type:open"]
    assert (a.otlp_endpoint, a.otlp_insecure, a.otlp_metrics_interval, a.otlp_headers,
            a.otlp_protocol) == ("grpc://c:4317", True, 15.0, ["authorization=Bearer x"],
                                 None)
    assert a.otlp_body == "map"
