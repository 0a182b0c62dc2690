"""Enforcement while the agent is down, reported after it restarts (issue 13, must-haves
9 and 10). Real agent (SIGKILLed: pins stay), real runc containers; root only.

9: `enforce` events the kernel made while the agent was down wait in the pinned ring
   buffer; the restarted agent names their policy, rule and mode (agent/policy/slots.py),
   also when the policy was replaced while it was down (the OLD version is named).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

WAIT_THEN_LS = ("while [ ! -e /tmp/go ]; do /bin/sleep 0.1; done; "
                "/bin/ls / >/dev/null; echo rc=$?")


@pytest.fixture
def denied() -> Iterator[Path]:
    """A private copy of /bin/true: a host-scoped deny on it touches nothing else."""
    d = Path(tempfile.mkdtemp(prefix="moray-restart-"))
    os.chmod(d, 0o755)
    shutil.copy("/bin/true", d / "mr-denied")
    yield d / "mr-denied"
    shutil.rmtree(d, ignore_errors=True)


def host_policy(binary: Path, mode: str = "enforce") -> str:
    return f"""apiVersion: moray/v1
kind: RuntimePolicy
metadata: {{name: rst-host}}
spec:
  scope: {{host: true}}
  mode: {mode}
  exec: {{deny: [{binary}]}}
"""


CTR_POLICY = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: rst-ctr}
spec:
  scope: {containers: {names: ['mr-rst-*']}}
  exec: {deny: [/bin/ls]}
"""


def _is(binary: str, pid: int | None = None) -> Any:
    def pred(ev: dict[str, Any]) -> bool:
        e = enforcement(ev)
        return (ev["type"] == "enforce" and e.get("binary") == binary
                and (pid is None or ev["process"]["pid"] == pid))
    return pred


def test_events_made_while_down_name_policy_rule_and_mode(denied: Path) -> None:
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("rst-host", host_policy(denied))
        agent.apply("rst-ctr", CTR_POLICY)
        with run_runc("mr-rst-1", ["sh", "-c", WAIT_THEN_LS], start=True) as ctr:
            agent.wait_log("container classified")
            agent.kill()  # SIGKILL: no teardown, the pins (and the ring buffer) stay
            host = subprocess.run([str(denied)], check=False)
            assert host.returncode == -9  # killed while the agent is down
            (ctr.bundle.parent / "rootfs" / "tmp" / "go").touch()
            assert "rc=137" in ctr.wait().stdout
        agent.start()
        ev = agent.wait_event(_is(str(denied)))
        e = enforcement(ev)
        assert (e["action"], e["policy"], e["rule"]) == (
            "killed", "rst-host", f"exec.deny: {denied}"), e
        assert e["policies"] == [{"name": "rst-host", "mode": "enforce", "enforced": True,
                                  "rule": f"exec.deny: {denied}"}]
        ev = agent.wait_event(_is("/bin/busybox"))  # /bin/ls -> busybox in the container
        e = enforcement(ev)
        assert (e["action"], e["policy"], e["rule"], e["policies"][0]["mode"]) == (
            "killed", "rst-ctr", "exec.deny: /bin/ls", "enforce"), e
        assert not [x for x in agent.events() if x["type"] == "enforce"
                    and str(enforcement(x).get("policy", "")).startswith("slot-")]
    finally:
        agent.cleanup()


def test_a_policy_replaced_while_down_old_events_name_the_old_version(denied: Path) -> None:
    other = denied.parent / "mr-other"
    shutil.copy("/bin/true", other)
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("rst-host", host_policy(denied))
        agent.kill()
        first = subprocess.run([str(denied)], check=False)
        assert first.returncode == -9
        # replaced while down: another binary, monitor mode
        agent.apply("rst-host", host_policy(other, mode="monitor"))
        agent.start()
        e = enforcement(agent.wait_event(_is(str(denied))))
        assert (e["action"], e["policy"], e["rule"], e["policies"][0]["mode"]) == (
            "killed", "rst-host", f"exec.deny: {denied}", "enforce"), e
        # the new version is live and named as such
        assert subprocess.run([str(other)], check=False).returncode == 0
        e = enforcement(agent.wait_event(_is(str(other))))
        assert (e["action"], e["policy"], e["rule"], e["policies"][0]["mode"]) == (
            "would-block", "rst-host", f"exec.deny: {other}", "monitor"), e
        assert subprocess.run([str(denied)], check=False).returncode == 0  # old rule gone
    finally:
        agent.cleanup()
