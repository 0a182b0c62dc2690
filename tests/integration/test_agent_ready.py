"""The agent's readiness as systemd and Kubernetes see it: NOTIFY_SOCKET (a real AF_UNIX
datagram socket) gets a STATUS= line per start-up step, READY=1 when /readyz has turned
200, WATCHDOG=1 after it, STOPPING=1 on SIGTERM; /healthz answers; each step's duration is
logged. Root only."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from moray.agent.app import Agent, Config
from tests.helpers.agent import AgentProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Notifications(threading.Thread):
    """Receives sd_notify datagrams; on READY=1 it asks /readyz at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.port = 0
        self.messages: list[str] = []
        self.readyz_at_ready: tuple[int, Any] | None = None
        self.done = threading.Event()
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def wait_for(self, message: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while message not in self.messages:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def run(self) -> None:
        while not self.done.is_set():
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(msg)
            if "READY=1" in msg.split("\n"):
                self.readyz_at_ready = get(self.port, "/readyz")
                self.ready.set()
            if "STOPPING=1" in msg.split("\n"):
                self.stopping.set()


def test_ready_when_attached_and_applied(tmp_path: Path) -> None:
    notes = Notifications(tmp_path / "notify")
    agent = AgentProcess(env={"NOTIFY_SOCKET": str(tmp_path / "notify"),
                              "WATCHDOG_USEC": "30000000"}, workdir=tmp_path)
    notes.port = agent.metrics_port
    notes.start()
    try:
        agent.start(timeout=120)
        assert notes.ready.wait(30), notes.messages
        # READY=1 is sent only after /readyz turned 200
        assert notes.readyz_at_ready is not None and notes.readyz_at_ready[0] == 200
        assert get(agent.metrics_port, "/healthz")[0] == 200
        # /metrics names the enforcement tier of every hook kind (the dashboard's table and
        # the tier alerts of packaging/monitoring read it), exactly one tier per hook
        figures = agent.metrics()
        tiers = [re.fullmatch(r'moray_enforcement_tier\{hook="([\w-]+)",tier="([\w-]+)"\}', k)
                 for k, v in figures.items()
                 if k.startswith("moray_enforcement_tier{") and v == 1]
        hooks = [m.group(1) for m in tiers if m]
        assert len(hooks) == len(tiers) == len(set(hooks)) and {"exec", "file"} <= set(hooks)
        assert figures["moray_queue_capacity"] > 0  # the queue fill ratio's denominator
        steps = [name for name, _fn in Agent(Config(proc=str(tmp_path))).steps]
        status = [m.removeprefix("STATUS=starting: ") for m in notes.messages
                  if m.startswith("STATUS=starting: ")]
        assert status == steps
        assert list(notes.readyz_at_ready[1]["steps"]) == steps  # ms per step, in order
        log = agent.log()
        took = dict(re.findall(r"start-up step (\w+): (\d+) ms", log))
        assert list(took) == steps
        total = re.search(r"start-up done: (\d+) ms", log)
        assert total is not None
        print(f"\nstart-up: {total.group(1)} ms;",
              ", ".join(f"{k} {v} ms" for k, v in took.items()))
        p = os.spawnv(os.P_NOWAIT, "/bin/true", ["/bin/true", "moray-ready-probe"])
        os.waitpid(p, 0)
        agent.events.wait_for(lambda e: e["type"] == "exec" and e["process"]["pid"] == p,
                              timeout=15, what="the exec of /bin/true")
        # WatchdogSec=: WATCHDOG=1 from the main loop while healthy, only after READY=1
        first = notes.wait_for("WATCHDOG=1", timeout=15)
        assert notes.messages.index("WATCHDOG=1") > min(
            i for i, m in enumerate(notes.messages) if "READY=1" in m.split("\n"))
        assert first
    finally:
        agent.stop()
        stopped = notes.stopping.wait(10)
        notes.done.set()
        notes.join(5)
    assert stopped, notes.messages
