"""OTLP export (agent/output/otlp.py): the mapping of events and alerts to LogRecords, the
endpoint options, and real exports to the gRPC and HTTP receivers of tests/helpers/otlp.py
on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from moray.agent.output import otlp
from moray.errors import ConfigError

WEB = {"id": "c0ffee", "name": "web", "image": "nginx:1.27", "runtime": "docker",
       "labels": {}, "pod": {"namespace": "prod", "name": "web-1", "uid": "u1",
                             "labels": {}}, "cgroup_id": 1 << 63}
EVENT = {"type": "open", "time": "2026-12-07T10:00:00.123456789Z", "node": "n1",
         "process": {"pid": 42, "tid": 42, "exec_id": "42:7", "binary": "/usr/bin/cat"},
         "parent": {"pid": 7, "exec_id": "7:1", "binary": "/bin/sh"}, "container": WEB,
         "file": {"path": "/etc/shadow", "flags": ["O_RDONLY"], "access": "read",
                  "error": None}}
ALERT = {"type": "alert", "time": EVENT["time"], "node": "n1", "rule": "Read sensitive file",
         "priority": "WARNING", "severity": 4, "tags": ["filesystem", "T1003"],
         "output": "cat read /etc/shadow", "event": EVENT}


def test_attributes_name_the_key_fields() -> None:
    assert otlp.attributes(EVENT) == {
        "moray.type": "open", "container.id": "c0ffee", "container.name": "web",
        "container.image.name": "nginx:1.27", "container.runtime": "docker",
        "k8s.namespace.name": "prod", "k8s.pod.name": "web-1", "k8s.pod.uid": "u1",
        "process.pid": 42, "process.executable.path": "/usr/bin/cat",
        "process.parent_pid": 7}
    a = otlp.attributes(ALERT)
    assert a["moray.type"] == "alert" and a["moray.rule"] == "Read sensitive file"
    assert a["moray.priority"] == "WARNING" and a["moray.event.type"] == "open"
    assert a["moray.tags"] == ["filesystem", "T1003"] and a["container.name"] == "web"
    host = {**EVENT, "container": None, "parent": None}
    assert set(otlp.attributes(host)) == {"moray.type", "process.pid",
                                          "process.executable.path"}


def test_severity_time_and_body() -> None:
    assert otlp.severity(EVENT) == (9, "INFO")
    assert otlp.severity({"type": "enforce"}) == (13, "WARN")
    assert otlp.severity(ALERT) == (13, "WARNING")
    assert otlp.severity({**ALERT, "priority": "CRITICAL"}) == (18, "CRITICAL")
    assert otlp.severity({**ALERT, "priority": "EMERGENCY"}) == (21, "EMERGENCY")
    assert otlp.time_ns("2026-12-07T10:00:00.123456789Z") == 1796637600123456789
    assert otlp.time_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert otlp.time_ns(None) is None and otlp.time_ns("yesterday") is None
    b = otlp.body(EVENT)
    assert b["container"]["cgroup_id"] == str(1 << 63)  # beyond OTLP's int64: as text
    assert b["process"] == EVENT["process"] and b["file"]["error"] is None


@pytest.mark.parametrize(("endpoint", "protocol", "insecure", "want"), [
    ("grpc://c:4317", None, True, ("grpc", "c:4317", "c:4317", True)),
    ("grpc://c:4317", None, False, ("grpc", "c:4317", "c:4317", False)),
    ("http://c:4318", None, False, ("http", "http://c:4318/v1/logs",
                                    "http://c:4318/v1/metrics", True)),
    ("https://c/otlp/", None, False, ("http", "https://c/otlp/v1/logs",
                                      "https://c/otlp/v1/metrics", False)),
    ("http://c:4317", "grpc", False, ("grpc", "c:4317", "c:4317", True)),
    ("https://c:4317", "grpc", False, ("grpc", "c:4317", "c:4317", False)),
])
def test_endpoints(endpoint: str, protocol: str | None, insecure: bool,
                   want: tuple[str, str, str, bool]) -> None:
    t = otlp.target(otlp.OtlpSettings(endpoint, protocol, ("a=1,B=2", "c=3"), insecure))
    assert (t.protocol, t.logs, t.metrics, t.insecure) == want
    assert t.headers == {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize(("endpoint", "protocol", "insecure", "message"), [
    ("c:4317", None, False, "wants grpc://HOST:PORT"),
    ("ftp://c", None, False, "wants grpc://HOST:PORT"),
    ("grpc://c:4317", "http", False, "is gRPC"),
    ("https://c:4318", None, True, "--otlp-insecure is for gRPC"),
    ("https://c:4317", "grpc", True, "--otlp-insecure with an https://"),
])
def test_bad_endpoints_refuse(endpoint: str, protocol: str | None, insecure: bool,
                              message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        otlp.settings_from(endpoint, protocol, (), insecure, 60)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        otlp.parse_headers(["novalue"])


def test_without_the_extra_the_error_says_how_to_get_it() -> None:
    # the SDK hidden from the import system, as on a host without `moray[otlp]`
    code = ("import sys; sys.modules['opentelemetry.sdk'] = None\n"
            "from moray.agent.output.otlp import OtlpExport, OtlpSettings, available\n"
            "assert not available()\n"
            "try:\n    OtlpExport(OtlpSettings('grpc://127.0.0.1:1', insecure=True), 'n')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("ConfigError --otlp-endpoint needs the OpenTelemetry SDK")
    assert "pip install 'moray[otlp]'" in out
