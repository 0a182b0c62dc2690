"""`moray-agent run --server ...` against a real moray-server on loopback: the agent
enrols with a one-time token, a policy applied on the server is enforced by the agent's
BPF programs, and the agent's events (the kill included) are stored by the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.containers import BUSYBOX
from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    yield srv
    srv.stop()


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
