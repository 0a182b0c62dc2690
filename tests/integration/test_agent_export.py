"""OTLP export and export filters end to end (root: runs the real agent, under the BPF
lock; needs the otlp extra).

1. An agent exports to the gRPC receiver of tests/helpers/otlp.py (plaintext, 127.0.0.1):
   a host process reading /etc/shadow arrives as the open event's LogRecord and the
   "Read sensitive file" alert's, with the process's pid and the rule in the attributes,
   and the agent's metrics arrive as OTLP metrics (with the metrics port off: OTLP only).
2. An agent with deny filters exports over HTTP/protobuf: the opens a condition denies are
   in neither the JSON output nor OTLP while the others are, the fork events are gone, the
   alert on a denied event is still raised and exported (filters never reach detection),
   and moray_export_filtered_total says how many each filter dropped.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]
pytest.importorskip("opentelemetry.sdk", reason="the otlp extra is not installed")

from tests.helpers.agent import AgentProcess  # noqa: E402
from tests.helpers.otlp import Log, Received, grpc_receiver, http_receiver  # noqa: E402

RULE = "Read sensitive file"


def _shadow_reader() -> int:
    p = subprocess.run(["/bin/sh", "-c", "echo $$; exec /bin/cat /etc/shadow"],
                       capture_output=True, text=True, check=True)
    return int(p.stdout.split("\n", 1)[0])


def _log(got: Received, pred: Any, what: str) -> Log:
    found: Log = got.wait(lambda g: next((x for x in g.logs if pred(x)), None), timeout=30)
    assert found, what
    return found


def test_events_alerts_and_metrics_over_grpc(tmp_path: Path) -> None:
    with grpc_receiver() as (url, got), AgentProcess(
            ["--otlp-endpoint", url, "--otlp-insecure", "--otlp-metrics-interval", "1",
             "--node", "otlp-node", "--metrics-port", "0"],   # OTLP only: no metrics port
            workdir=tmp_path) as agent:
        pid = _shadow_reader()
        ev = _log(got, lambda x: x.attributes.get("moray.type") == "open"
                  and x.attributes.get("process.pid") == pid
                  and x.obj["file"]["path"] == "/etc/shadow", "the open event")
        al = _log(got, lambda x: x.attributes.get("moray.type") == "alert"
                  and x.attributes.get("process.pid") == pid, "the alert")
        metrics = got.wait(lambda g: "moray_events" in g.metrics
                           and "moray_otlp_exported" in g.metrics and g.metrics)
        written = agent.events.wait_for(
            lambda e: e.get("type") == "open" and e["process"]["pid"] == pid
            and e["file"]["path"] == "/etc/shadow", timeout=10, what="the JSON event")
    log = agent.log()                               # its shutdown exported cleanly too
    assert "OTLP" not in log.split("moray-agent running", 1)[1].replace("OTLP export to", "")
    assert "Traceback" not in log, log[-3000:]
    assert ev.obj == written                        # the same object as the JSON output
    assert ev.attributes["process.executable.path"] == "/usr/bin/cat"
    assert ev.severity_text == "INFO" and ev.resource["host.name"] == "otlp-node"
    assert ev.resource["service.name"] == "moray-agent"
    assert al.attributes["moray.rule"] == RULE and al.attributes["moray.priority"] == "WARNING"
    assert (al.severity_number, al.severity_text) == (13, "WARNING")
    assert al.obj["event"]["process"]["pid"] == pid
    types = {kv.value.string_value for p in metrics["moray_events"].sum.data_points
             for kv in p.attributes if kv.key == "type"}
    assert "open" in types and metrics["moray_events"].sum.is_monotonic


def test_deny_filters_over_http(tmp_path: Path) -> None:
    work = tmp_path / "files"
    (work / "keep").mkdir(parents=True)
    (work / "drop").mkdir()
    (work / "keep" / "a").write_text("a")
    (work / "drop" / "b").write_text("b")
    (tmp_path / "agent").mkdir()
    deny_open = f"evt.type = open and file.path startswith {work}/drop/"
    deny_shadow = "evt.type = open and file.path = /etc/shadow"
    with http_receiver() as (url, got), AgentProcess(
            ["--otlp-endpoint", url, "--otlp-metrics-interval", "0", "--watch", f"{work}/",
             "--export-deny", deny_open, "--export-deny", "type:fork",
             "--export-deny", deny_shadow], workdir=tmp_path / "agent") as agent:
        pids = [subprocess.run(["/bin/sh", "-c", f"echo $$; exec /bin/cat {work}/drop/b "
                                f"{work}/keep/a"], capture_output=True, text=True,
                               check=True).stdout.split("\n", 1)[0] for _ in range(3)]
        last = int(pids[-1])
        shadow = _shadow_reader()

        def kept(e: dict[str, Any]) -> bool:
            return e.get("type") == "open" and e["process"]["pid"] == last and \
                e["file"]["path"] == f"{work}/keep/a"
        agent.events.wait_for(kept, timeout=30, what="the last kept open")
        _log(got, lambda x: x.obj.get("type") == "open" and kept(x.obj), "it over OTLP")
        alert = agent.events.wait_for(
            lambda e: e.get("type") == "alert" and e["event"]["process"]["pid"] == shadow,
            timeout=30, what="the alert on the denied /etc/shadow open")
        _log(got, lambda x: x.attributes.get("moray.type") == "alert"
             and x.attributes.get("process.pid") == shadow, "the alert over OTLP")
        counts = {k: v for k, v in agent.metrics().items()
                  if k.startswith("moray_export_filtered_total")}
    events = agent.events.all(lambda e: True)
    paths = [e["file"]["path"] for e in events if e.get("type") == "open"]
    assert paths.count(f"{work}/keep/a") >= 3 and f"{work}/drop/b" not in paths
    assert "/etc/shadow" not in paths and alert["rule"] == RULE
    assert not [e for e in events if e.get("type") == "fork"]
    exported = [x.obj for x in got.logs]
    assert not [b for b in exported if b.get("type") == "fork"
                or (b.get("file") or {}).get("path") in (f"{work}/drop/b", "/etc/shadow")]

    def count(text: str) -> float:
        return counts[f'moray_export_filtered_total{{filter="{text}"}}']
    assert count(deny_open) == 3            # one open of drop/b per cat
    assert count(deny_shadow) >= 1 and count("type:fork") >= 4
