"""`--alert-format falco` end to end (root: runs the real agent, under the BPF lock).

One agent with the default rules writes its alerts as Falco's JSON to its output and
POSTs them to a webhook on loopback (where falcosidekick would listen). A runc container
reads its /etc/shadow once the agent has identified the container (an agent still
draining its start-up backlog can reach a container's events after runc has deleted its
state, and a plain runc container is named only by that state): the alert, in both
places, parses, has every key Falco writes, and its `output_fields` are Falco field names
(tests/fixtures/falco/fields.txt) carrying the container's and the process's values.
Events stay in moray's schema beside it.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.containers import build_rootfs, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

FIELDS = frozenset(
    line.strip() for line in (Path(__file__).resolve().parents[1] / "fixtures" / "falco" /
                              "fields.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#"))
REQUIRED = ("time", "rule", "priority", "output", "output_fields", "hostname", "source",
            "tags")
RULE = "Read sensitive file"


class _Hook(http.server.BaseHTTPRequestHandler):
    got: list[bytes]

    def do_POST(self) -> None:
        self.got.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _is_falco(a: dict[str, Any]) -> None:
    assert all(k in a for k in REQUIRED), sorted(a)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$", a["time"])
    assert a["source"] == "syscall" and a["priority"] == "Warning"
    bad = [k for k in a["output_fields"] if k not in FIELDS and not k.startswith("moray.")]
    assert not bad, bad


def test_agent_writes_falco_alerts(tmp_path: Path) -> None:
    got: list[bytes] = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            type("Hook", (_Hook,), {"got": got}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    cid = f"mr-falco-{os.getpid()}"
    try:
        with AgentProcess(["--alert-format", "falco", "--webhook",
                           f"http://127.0.0.1:{httpd.server_address[1]}/falco"],
                          workdir=tmp_path) as agent:
            rootfs = build_rootfs(tmp_path / "rootfs")
            script = ("while [ ! -e /tmp/go ]; do /bin/sleep 0.1; done; /bin/cat /etc/shadow")
            with run_runc(cid, ["/bin/sh", "-c", script], rootfs=rootfs, start=True) as ctr:
                agent.events.wait_for(lambda e: (e.get("container") or {}).get("id") == cid,
                                      timeout=30, what="an event of the identified container")
                (rootfs / "tmp" / "go").touch()
                ctr.wait(30)

            def ours(e: dict[str, Any]) -> bool:
                return e.get("rule") == RULE and e.get("output_fields", {}).get(
                    "container.full_id") == cid
            a = agent.events.wait_for(ours, timeout=20, what="the Falco-format alert")
            deadline = time.monotonic() + 20
            posted = None
            while posted is None and time.monotonic() < deadline:
                posted = next((json.loads(b) for b in list(got) if ours(json.loads(b))), None)
                time.sleep(0.05)
            # the events themselves stay in moray's schema
            assert agent.events.all(lambda e: e.get("type") == "open")
    finally:
        httpd.shutdown()
    _is_falco(a)
    of = a["output_fields"]
    assert of["fd.name"] == "/etc/shadow" and of["evt.type"] == "openat"
    assert of["proc.name"] == "cat" and of["container.id"] == cid[:12]
    assert of["container.name"] == cid and of["user.name"] == "root"
    assert isinstance(of["proc.pid"], int) and isinstance(of["evt.time"], int)
    assert "/etc/shadow" in a["output"] and a["output"].startswith(a["time"][11:29])
    assert a["hostname"] == of["evt.hostname"] and a["hostname"]
    assert posted == a, "the webhook got the same Falco JSON"
