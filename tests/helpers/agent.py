"""Run the real agent for integration tests and read the events it writes.

`AgentProcess` starts `moray-agent run` as a subprocess (exactly what a user runs), waits
until it says it is running, and stops it with SIGTERM on exit. `EventLog` tails its JSON
lines output; `wait_for(predicate)` returns the first event that matches, or fails with
the last events seen, so a failing test shows what the agent did report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Event = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]


def agent_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "moray-agent"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "moray.agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._pos = 0
        self._partial = b""

    def poll(self) -> list[Event]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return []
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.events.extend(new)
        return new

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 10,
                 what: str = "event") -> Event:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            self.poll()
            for e in self.events[checked:]:
                if pred(e):
                    return e
            checked = len(self.events)
            if time.monotonic() > deadline:
                tail = "\n".join(_brief(e) for e in self.events[-15:])
                raise AssertionError(f"no {what} within {timeout}s; last events:\n{tail}")
            time.sleep(0.05)

    def all(self, pred: Callable[[Event], bool]) -> list[Event]:
        self.poll()
        return [e for e in self.events if pred(e)]


class AgentProcess:
    def __init__(self, args: Sequence[str] = (), workdir: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.work = workdir or Path(tempfile.mkdtemp(prefix="moray-agent-"))
        self.events_path = self.work / "events.jsonl"
        self.log_path = self.work / "agent.log"
        self.metrics_port = free_port()
        # private pins and policy dir: agents started by tests never share a ring buffer
        # (a pinned map is adopted by the next agent) or pick up another test's policies
        self.pin_root = f"/sys/fs/bpf/moray-test-{os.getpid()}-{id(self):x}"
        self.policy_dir = self.work / "policies"
        self.policy_dir.mkdir(exist_ok=True)
        self.policy_status = self.work / "policy-status.json"  # not the host's /run/moray
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.events = EventLog(self.events_path)

    def start(self, timeout: float = 90) -> AgentProcess:
        """Start the agent and wait for "moray-agent running" (a loaded 2-core machine
        has taken over 30 s); an agent that exits or does not get there is stopped and
        its pins removed before the error, never left running behind the test."""
        cmd = [*agent_cmd(), "run", "--output", str(self.events_path), "--metrics-port",
               str(self.metrics_port), "--pin-root", self.pin_root, "--policy-dir",
               str(self.policy_dir), "--policy-status", str(self.policy_status), *self.args]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO,
                                         env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + timeout
        while "moray-agent running" not in self.log():
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"agent not running after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
        return out

    def metric_sum(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == prefix)

    def rss_kb(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.events.poll()
        self.unload()
        return self.proc.returncode

    def unload(self) -> None:
        """Remove what this agent pinned (enforcement outlives the agent by design)."""
        subprocess.run([*agent_cmd(), "unload", "--pin-root", self.pin_root],
                       capture_output=True, timeout=60, check=False)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_type(t: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == t


def _brief(e: Event) -> str:
    """One event for a failure message: what tests match on, the container in full."""
    p = e.get("process") or {}
    brief = {"type": e.get("type"), "pid": p.get("pid"), "exec_id": p.get("exec_id"),
             "args": p.get("args"), "parent": (e.get("parent") or {}).get("exec_id"),
             "container": e.get("container")}
    for k in ("file", "network", "exec", "exit", "enforcement", "syscall", "rule"):
        if k in e:
            brief[k] = e[k]
    return json.dumps(brief)[:600]
