"""The whole path with the real BPF agent: `moray policy apply` on the control plane ->
signed push -> the agent's client -> the agent's policy directory -> BPF maps -> a denied
exec killed, on the host and in a real runc container, within a second; an agent whose
labels the policy does not select never receives it; the acknowledgement carries the
tier per rule. (root: BPF, runc)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy
from moray.agent.controlplane.policydir import PolicyDirSink
from tests.helpers.agent import AgentProcess
from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import BUSYBOX, run_runc
from tests.helpers.controlplane import ROOT, ServerProcess, policy_yaml, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    yield srv
    srv.stop()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path / "agent")
    try:
        a.start()
        yield a
    finally:
        a.cleanup()


def moray(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
           "MORAY_TOKEN": server.admin_token}
    return subprocess.run([sys.executable, "-m", "moray.controlplane.cli", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=True)


def test_cli_apply_is_enforced_by_the_real_agent_within_a_second(
        server: ServerProcess, agent: AgentProc, tmp_path: Path) -> None:
    api = server.api()
    real = ControlPlaneClient(server.grpc_target, tmp_path / "cp-real",
                              PolicyDirSink(agent.policy_dir, agent.status),
                              token=api.token({"zone": "a"}), ca_pem=server.ca_pem,
                              enroll_server=server.enroll_target, heartbeat_interval=0.5)
    other_got: list[VerifiedPolicy] = []

    def other_on_policy(policy: VerifiedPolicy) -> ApplyResult:
        other_got.append(policy)
        return ApplyResult(ok=True)

    other = ControlPlaneClient(server.grpc_target, tmp_path / "cp-other", other_on_policy,
                               token=api.token({"zone": "b"}), ca_pem=server.ca_pem,
                               enroll_server=server.enroll_target, heartbeat_interval=0.5)
    binary = tmp_path / "bin" / "busybox"    # busybox runs applets only under its own name
    binary.parent.mkdir()
    shutil.copy2(BUSYBOX, binary)
    real.start()
    other.start()
    try:
        wait_for(lambda: len([a for a in api("GET", "/api/v1/agents") if a["connected"]]) == 2,
                 timeout=15, what="both agents connected")
        assert subprocess.run([str(binary), "true"], check=False).returncode == 0
        policy = tmp_path / "host-deny.yaml"
        policy.write_text(f"""apiVersion: moray/v1
kind: RuntimePolicy
metadata: {{name: cp-host-deny}}
spec:
  scope: {{agents: {{labels: {{zone: a}}}}, host: true, containers: {{names: ["mr-cp-*"]}}}}
  exec: {{deny: ["{binary}", /bin/wget]}}
""")
        started = time.monotonic()
        moray(server, "policy", "apply", str(policy))
        stored = time.monotonic()
        while True:
            rc = subprocess.run([str(binary), "true"], check=False).returncode
            if rc == -signal.SIGKILL:
                break
            assert time.monotonic() - stored < 1.0, "not enforced within 1 s of the apply"
            time.sleep(0.01)
        enforced_after, since_start = time.monotonic() - stored, time.monotonic() - started
        ev = agent.wait_event(lambda e: e.get("type") == "enforce"
                              and enforcement(e).get("binary") == str(binary))
        assert (enforcement(ev)["policy"], enforcement(ev)["action"]) == ("cp-host-deny",
                                                                           "killed")
        # in a real container too (the policy also selects containers named mr-cp-*)
        with run_runc("mr-cp-1", ["sh", "-c", "/bin/wget -h; echo rc=$?"]) as ctr:
            res = ctr.wait()
        assert "rc=137" in res.stdout, res
        # acknowledged with the version and the tier of each rule
        ack = wait_for(lambda: api("GET", f"/api/v1/agents/{real.identity.agent_id}")[
            "policies"].get("cp-host-deny"), what="ack")
        assert (ack["status"], ack["version"]) == ("APPLIED", 1)
        assert ack["tiers"][f"exec.deny: {binary}"] in ("kill", "lsm-deny", "lsm")
        # the agent without zone=a never received it
        assert other_got == []
        # deleting the policy on the server lifts the enforcement
        moray(server, "policy", "delete", "cp-host-deny")
        wait_for(lambda: subprocess.run([str(binary), "true"], check=False).returncode == 0,
                 timeout=5, what="enforcement lifted")
        print(f"enforced {enforced_after * 1000:.0f} ms after `moray policy apply` returned, "
              f"{since_start * 1000:.0f} ms after it started")
    finally:
        real.stop()
        other.stop()


# `moray-agent run --server ...` end to end: the agent enrols with a one-time token, a
# policy applied on the server is enforced by its BPF programs, and its events (the kill
# included) are stored by the server.
def test_agent_enrols_enforces_pushed_policy_and_streams_events(
        server: ServerProcess, tmp_path: Path) -> None:
    api = server.api()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(server.ca_pem)
    binary = tmp_path / "bin" / "busybox"  # a private copy: the policy kills only it
    binary.parent.mkdir()
    shutil.copy2(BUSYBOX, binary)
    args = ["--no-default-rules", "--server", server.grpc_target, "--enroll-server",
            server.enroll_target, "--enroll-token", api.token({"zone": "a"}), "--ca", str(ca),
            "--data-dir", str(tmp_path / "agent-data"), "--label", "zone=a"]
    with AgentProcess(args) as agent:
        wait_for(lambda: any(a["connected"] for a in api("GET", "/api/v1/agents")),
                 timeout=30, what="agent connected")
        assert subprocess.run([str(binary), "true"], check=False).returncode == 0
        api.apply(policy_yaml("cp-deny", labels={"zone": "a"}, deny=str(binary)))
        deadline = time.monotonic() + 20
        while subprocess.run([str(binary), "true"], check=False).returncode != -9:
            assert time.monotonic() < deadline, "pushed policy never enforced"
            time.sleep(0.2)
        kill = agent.events.wait_for(
            lambda e: e["type"] == "enforce" and e["enforcement"].get("action") == "killed",
            timeout=20, what="enforcement event")
        assert kill["enforcement"]["policy"] == "cp-deny"

        def stored() -> bool:
            events = api("GET", "/api/v1/events", params={"type": "enforce", "limit": 100})
            rows = events if isinstance(events, list) else events.get("events", [])
            return any("cp-deny" in str(r) for r in rows)

        wait_for(stored, timeout=30, what="the kill stored by the server")
        # the spool the control-plane client keeps is on the agent's /metrics (the
        # dashboard's spool panels and the spool alerts of packaging/monitoring)
        figures = agent.metrics()
        assert "moray_spool_records" in figures and "moray_spool_bytes" in figures
        assert figures['moray_spool_drops_total{reason="full"}'] == 0
