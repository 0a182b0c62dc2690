"""Enforcement outlives the agent (pinned in bpffs), a restarted agent adopts it, and
`moray-agent unload` removes it. Real runc containers; root only."""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers.agent_proc import AgentProc
from tests.helpers.containers import run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

POLICY = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: pin-deny}
spec:
  scope: {containers: {names: ['mr-pin-*']}}
  exec: {deny: [/bin/ls]}
"""

WAIT_THEN_LS = "while [ ! -e /tmp/go ]; do /bin/sleep 0.1; done; /bin/ls / >/dev/null; echo rc=$?"


def test_kill_restart_unload() -> None:
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("pin-deny", POLICY)
        with run_runc("mr-pin-1", ["sh", "-c", WAIT_THEN_LS], start=True) as ctr:
            agent.wait_log("container classified")  # first exec held, then released
            time.sleep(0.5)
            agent.kill()     # SIGKILL: no teardown ran
            assert os.path.isdir(agent.pin_root)
            (ctr.bundle.parent / "rootfs" / "tmp" / "go").touch()
            res = ctr.wait()
        assert "rc=137" in res.stdout, res

        agent.start()  # restart: adopts the pinned maps and links
        agent.wait_log("adopting pinned BPF state")
        with run_runc("mr-pin-2", ["sh", "-c", "/bin/ls / >/dev/null; echo rc=$?"]) as ctr:
            assert "rc=137" in ctr.wait().stdout
        agent.stop()   # a clean stop keeps enforcement pinned too
        with run_runc("mr-pin-3", ["sh", "-c", "/bin/ls / >/dev/null; echo rc=$?"]) as ctr:
            # no agent: the new container is not classified; it is a host cgroup to the
            # kernel (docs/policy.md) unless nested in a covered one
            ctr.wait()
        agent.unload()
        assert not os.path.exists(agent.pin_root)
        with run_runc("mr-pin-4", ["sh", "-c", "/bin/ls / >/dev/null; echo rc=$?"]) as ctr:
            assert "rc=0" in ctr.wait().stdout
    finally:
        agent.cleanup()
