"""Run the real `moray-agent run` as a subprocess for enforcement tests (root only).

:class:`AgentProc` starts the agent with a private policy directory, pin root (under
bpffs) and output file, waits until its policies are published, and reads its JSON
events. ``kill()`` SIGKILLs it (pins stay), ``stop()`` SIGTERMs it; ``unload()`` runs
`moray-agent unload` for the private pin root. Nothing is left behind by ``cleanup()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.procs import Child

AGENT = [sys.executable, "-m", "moray.agent.cli"]


class AgentProc(Child):
    stop_timeout = 30

    def __init__(self, work: Path | None = None, args: Sequence[str] = ()) -> None:
        self.work = work or Path(tempfile.mkdtemp(prefix="moray-enforce-"))
        self.args = list(args)  # more `moray-agent run` options
        self.policy_dir = self.work / "policies"
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self.pin_root = f"/sys/fs/bpf/moray-test-{os.getpid()}-{id(self) & 0xffff:x}"
        self.output = self.work / "events.jsonl"
        self.status = self.work / "policy-status.json"  # not the host's /run/moray
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.work / "agent.log"
        self._applied_seen = 0

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=60,
                             check=False, cwd=Path(__file__).resolve().parents[2])
        if check and res.returncode != 0:
            raise RuntimeError(f"moray-agent {' '.join(args)}: {res.stdout}{res.stderr}")
        return res

    def start(self, timeout: float = 60) -> None:
        # the log is appended across restarts: wait for *this* start's line
        before = self.log_text().count("moray-agent running")
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*AGENT, "--log-level", "info", "run", "--metrics-port", "0",
             "--policy-dir", str(self.policy_dir), "--pin-root", self.pin_root,
             "--policy-status", str(self.status), "-o", str(self.output), *self.args],
            stdout=subprocess.DEVNULL, stderr=logf, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2])
        logf.close()
        self.wait_log("moray-agent running", timeout, before + 1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {needle!r} in agent log:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def apply(self, name: str, text: str, timeout: float = 15) -> None:
        """Write a policy file and wait until the agent published it."""
        before = self.log_text().count("policies applied")
        f = self.work / f"{name}.yaml"
        f.write_text(text)
        self.cli("policy", "apply", "--policy-dir", str(self.policy_dir), str(f))
        if self.proc is not None and self.proc.poll() is None:
            self.wait_log("policies applied", timeout, before + 1)

    def delete(self, name: str, timeout: float = 15) -> None:
        before = self.log_text().count("policies applied")
        self.cli("policy", "delete", "--policy-dir", str(self.policy_dir), name)
        if self.proc is not None and self.proc.poll() is None:
            self.wait_log("policies applied", timeout, before + 1)

    def wait_status(self, pred: Callable[[dict[str, Any]], bool],
                    timeout: float = 15) -> dict[str, Any]:
        """The agent's policy-status file once ``pred`` holds for it. The file is
        replaced atomically after each publish; a read between the publish and the
        replace sees the previous document (or none), so callers wait, not read once."""
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while True:
            try:
                doc = json.loads(self.status.read_text())
            except (OSError, ValueError):
                doc = {}
            if pred(doc):
                return doc
            if time.monotonic() > deadline:
                raise TimeoutError(f"policy status never matched; last: {doc}")
            time.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        out = []
        for line in self.output.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        return out

    def wait_event(self, pred: Callable[[dict[str, Any]], bool],
                   timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events():
                if pred(ev):
                    return ev
            if time.monotonic() > deadline:
                kinds = [e.get("enforcement") for e in self.events() if e["type"] == "enforce"]
                raise TimeoutError(f"no matching event; enforcement events: {kinds}")
            time.sleep(0.1)

    def unload(self) -> None:
        self.cli("unload", "--pin-root", self.pin_root)

    def cleanup(self) -> None:
        self.stop()
        if os.path.exists(self.pin_root):
            self.unload()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> AgentProc:
        """`with AgentProc() as a`: started; stopped, unloaded and removed on the way out
        (also when start() fails)."""
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def enforcement(ev: dict[str, Any]) -> dict[str, Any]:
    e = ev.get("enforcement")
    return e if isinstance(e, dict) else {}
