"""Falco-format alerts (agent/output/falco.py): alerts raised by the real detector on
events built from recorded kernel records (tests/fixtures/records), mapped to Falco's
JSON and checked against Falco's field list (tests/fixtures/falco/fields.txt, with its
source); the router's falco mode. No privileges."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load_texts
from moray.agent.detect.model import Priority
from moray.agent.enrich.proctree import Process, ProcessTree
from moray.agent.events.decode import decode
from moray.agent.output.falco import PRIORITIES, UserNames, epoch_ns, split_image, to_falco
from moray.agent.output.jsonl import JsonLines
from moray.agent.output.schema import Formatter
from moray.agent.pipeline.route import Router
from tests.unit.test_route import Output

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FALCO_FIELDS = frozenset(
    line.strip() for line in (FIX / "falco" / "fields.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#"))
# the keys of a Falco alert (falco's JSON output, json_output: true)
REQUIRED = ("time", "rule", "priority", "output", "output_fields", "hostname", "source",
            "tags")
RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")

RULES = """
- rule: T exec
  desc: t
  condition: evt.type = exec
  output: "exec %proc.cmdline"
  priority: NOTICE
  tags: [process]
  mitre: [T1059]
- rule: T open
  desc: t
  condition: evt.type = open
  output: "open %file.path %file.error"
  priority: WARNING
  tags: [filesystem]
- rule: T net
  desc: t
  condition: evt.type in (connect, accept, listen, send)
  output: "%evt.type %net.daddr:%net.dport"
  priority: CRITICAL
  tags: [network]
"""

CTR = {"id": "3ad7b26ded6d8e7b23da7d48fe889434573036c27ae5a74837233de441c3601e",
       "name": "web", "runtime": "containerd", "image": "registry.local:5000/shop/web:1.4",
       "image_digest": None, "cgroup_id": 77, "netns": None, "labels": {},
       "pod": {"namespace": "shop", "name": "web-5d9", "uid": "u-1",
               "labels": {"app": "web"}}}


def alert_from(record: str, container: dict[str, Any] | None = None) -> dict[str, Any]:
    """The detector's alert on the event the pipeline makes of one recorded record."""
    e = decode((FIX / "records" / f"{record}.bin").read_bytes())
    k = e.proc
    binary = getattr(e, "binary", "/usr/bin/python3")
    args = tuple(getattr(e, "args", ("python3", "-c", "x")))
    parent = Process(f"{k.ppid}:1", k.ppid, 1, 1, None, "/usr/bin/bash", ("bash", "-i"), "/",
                     0, 0, 0, k.cgroup_id, "bash")
    p = Process(f"{k.pid}:2", k.pid, 2, k.ppid, parent.exec_id, binary, args, "/tmp", k.uid,
                k.euid, k.gid, k.cgroup_id, "python3")
    tree = ProcessTree(proc="/nonexistent")
    tree.live[parent.exec_id] = parent
    tree.live[p.exec_id] = p
    ev = Formatter("node-1").event(e, p, parent, container)  # type: ignore[arg-type]
    alerts = Detector(load_texts([("t.yaml", RULES)]), tree, proc="/nonexistent").process(
        ev, p, parent)
    assert len(alerts) == 1, alerts
    return alerts[0]


def check(f: dict[str, Any]) -> None:
    assert all(k in f for k in REQUIRED)
    assert RFC3339_NS.match(f["time"])
    assert f["priority"] in PRIORITIES.values() and f["source"] == "syscall"
    unknown = {k for k in f["output_fields"] if k not in FALCO_FIELDS
               and not k.startswith("moray.")}
    assert not unknown, f"not Falco field names: {sorted(unknown)}"
    orjson.loads(orjson.dumps(f))


@pytest.mark.parametrize("record", ["exec", "open", "open_failed", "connect", "connect6",
                                    "accept", "listen", "send"])
def test_recorded_events_map_to_falco_fields(record: str) -> None:
    a = alert_from(record)
    f = to_falco(a)
    check(f)
    of = f["output_fields"]
    ev = a["event"]
    assert f["rule"] == a["rule"] and f["hostname"] == "node-1" == of["evt.hostname"]
    assert f["tags"] == a["tags"]
    assert f["time"] == ev["time"] and of["evt.time"] == epoch_ns(ev["time"])
    assert f["output"].endswith(f"{f['priority']} {a['output']}")
    assert of["proc.pid"] == ev["process"]["pid"] and of["proc.ppid"] == ev["parent"]["pid"]
    assert of["proc.exepath"] == ev["process"]["binary"]
    assert of["proc.name"] == ev["process"]["comm"]
    assert of["proc.pname"] == "bash" and of["proc.pcmdline"] == "bash -i"
    assert of["user.uid"] == ev["process"]["uid"]
    assert of["container.id"] == "host" == of["container.name"]
    assert of["moray.exec_id"] == ev["process"]["exec_id"]


def test_exec_fields() -> None:
    f = to_falco(alert_from("exec"))
    of = f["output_fields"]
    assert of["evt.type"] == "execve" and f["priority"] == "Notice"
    proc = alert_from("exec")["event"]["process"]
    args = proc["args"]
    assert of["proc.cmdline"] == " ".join([proc["comm"], *args[1:]])
    assert of["proc.exe"] == args[0]
    assert "fd.name" not in of  # an exec has no fd
    assert "T1059" in f["tags"]


def test_open_fields() -> None:
    a = alert_from("open")
    of = to_falco(a)["output_fields"]
    path = a["event"]["file"]["path"]
    assert of["evt.type"] == "openat" and of["fd.name"] == path
    assert of["fd.filename"] == path.rsplit("/", 1)[1]
    assert of["evt.res"] == "SUCCESS" and of["evt.failed"] is False
    assert of["evt.is_open_read"] is True
    bad = to_falco(alert_from("open_failed"))["output_fields"]
    assert bad["evt.res"] == "ENOENT" and bad["evt.rawres"] == -2 and bad["evt.failed"]


def test_network_ends() -> None:
    """connect: this process is the client (saddr local); accept: the server."""
    c = alert_from("connect")
    n = c["event"]["network"]
    of = to_falco(c)["output_fields"]
    assert (of["fd.sip"], of["fd.sport"]) == (n["daddr"], n["dport"])
    assert of["fd.l4proto"] == "tcp" and of["fd.is_server"] is False
    # the cgroup connect hook runs before the kernel picks the local end: server end only
    assert n["saddr"] is None and of["fd.name"] == f"{n['daddr']}:{n['dport']}"
    a = alert_from("accept")
    n = a["event"]["network"]
    of = to_falco(a)["output_fields"]
    assert (of["fd.sip"], of["fd.sport"]) == (n["saddr"], n["sport"])
    assert (of["fd.cip"], of["fd.cport"]) == (n["daddr"], n["dport"])
    assert of["fd.is_server"] is True
    assert of["fd.name"] == f"{n['daddr']}:{n['dport']}->{n['saddr']}:{n['sport']}"
    six = to_falco(alert_from("connect6"))["output_fields"]
    n6 = alert_from("connect6")["event"]["network"]
    assert six["fd.name"] == f"[::1]:{n6['dport']}"
    assert six["fd.type"] == "ipv6"
    lst = alert_from("listen")
    n = lst["event"]["network"]
    assert to_falco(lst)["output_fields"]["fd.name"] == f"{n['saddr']}:{n['sport']}"


def test_container_and_kubernetes_fields() -> None:
    of = to_falco(alert_from("open", CTR))["output_fields"]
    assert of["container.id"] == CTR["id"][:12] and of["container.full_id"] == CTR["id"]
    assert of["container.name"] == "web" and of["container.type"] == "containerd"
    assert of["container.image.repository"] == "registry.local:5000/shop/web"
    assert of["container.image.tag"] == "1.4"
    assert of["k8s.ns.name"] == "shop" and of["k8s.pod.name"] == "web-5d9"
    assert of["k8s.pod.labels"] == "app:web"


def test_every_priority_has_a_falco_name() -> None:
    assert set(PRIORITIES) == {p.name for p in Priority}
    assert list(PRIORITIES.values()) == ["Emergency", "Alert", "Critical", "Error", "Warning",
                                         "Notice", "Informational", "Debug"]


def test_image_references() -> None:
    assert split_image("nginx") == ("nginx", None)
    assert split_image("nginx:1.25") == ("nginx", "1.25")
    assert split_image("localhost:5000/app") == ("localhost:5000/app", None)
    assert split_image("r.io/a/b:2@sha256:ab") == ("r.io/a/b", "2")
    assert split_image(None) == (None, None)




class Spool:
    def __init__(self) -> None:
        self.lines = b""

    def submit(self, events: list[Any], lines: bytearray) -> None:
        self.lines += bytes(lines)


def test_router_falco_mode(tmp_path: Path) -> None:
    """The JSON output and the webhook get Falco's JSON; the control plane moray's."""
    a = alert_from("open")
    out, spool = Output(), Spool()
    r = Router(JsonLines(str(tmp_path / "o.jsonl")), [out], spool,  # type: ignore[arg-type]
               alert_format="falco")
    r.alerts([a])
    r.close()
    written = orjson.loads((tmp_path / "o.jsonl").read_bytes())
    check(written)
    assert written == orjson.loads(orjson.dumps(to_falco(a)))
    assert out.got[0][1] is not None and orjson.loads(out.got[0][1]) == written
    assert orjson.loads(spool.lines)["type"] == "alert"  # moray's own, for the server
    with pytest.raises(ValueError):
        Router(JsonLines(str(tmp_path / "x")), alert_format="falcon")


def test_router_default_is_morays_alert(tmp_path: Path) -> None:
    a = alert_from("open")
    r = Router(JsonLines(str(tmp_path / "o.jsonl")))
    r.alerts([a])
    r.close()
    assert orjson.loads((tmp_path / "o.jsonl").read_bytes()) == orjson.loads(orjson.dumps(a))


def test_user_names_from_the_host_roots_passwd(tmp_path: Path) -> None:
    """From <host-root>/etc/passwd (not NSS, not the agent's own container), re-read when
    it changes; uid 0 is root anywhere; other uids in containers are not named."""
    (tmp_path / "etc").mkdir()
    pw = tmp_path / "etc" / "passwd"
    pw.write_text("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/a:/bin/sh\nbad line\n")
    users = UserNames(str(tmp_path), recheck=0)
    assert users(1000, False) == "alice" and users(1001, False) is None
    assert users(0, True) == "root" and users(1000, True) is None and users(None, False) is None
    pw.write_text("bob:x:1000:1000::/home/b:/bin/sh\n")
    os.utime(pw, (1, 1))  # a new mtime even within the file system's granularity
    assert users(1000, False) == "bob"
    a = alert_from("open")
    a["event"]["process"] = {**a["event"]["process"], "uid": 1000}
    assert to_falco(a, users)["output_fields"]["user.name"] == "bob"
    assert UserNames(str(tmp_path / "nowhere"))(1000, False) is None


def test_config_key_and_bad_values(tmp_path: Path) -> None:
    """`alert-format: falco` in agent.yaml; a value argparse's choices did not see (a
    config file's) stops start-up with the key named."""
    from moray.agent.detect.stage import DetectStage, DetectStageError
    from moray.cli import parse

    f = tmp_path / "agent.yaml"
    f.write_text("alert-format: falco\n")
    assert parse(["run", "--config", str(f)], "moray-agent").alert_format == "falco"
    assert parse(["run"], "moray-agent").alert_format == "moray"
    with pytest.raises(SystemExit):
        parse(["run", "--alert-format", "falcon"], "moray-agent")

    class Cfg:
        alert_format = "falcon"
        default_rules = True
        rules: tuple[str, ...] = ()
    with pytest.raises(DetectStageError, match="alert-format 'falcon'"):
        DetectStage.from_config(Cfg(), ProcessTree(proc="/nonexistent"))
