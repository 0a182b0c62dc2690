"""Enforcement while the agent is down, reported after it restarts (issue 13, must-haves
9 and 10). Real agent (SIGKILLed: pins stay), real runc containers; root only.

9: `enforce` events the kernel made while the agent was down wait in the pinned ring
   buffer; the restarted agent names their policy, rule and mode (agent/policy/slots.py),
   also when the policy was replaced while it was down (the OLD version is named).
"""

from __future__ import annotations

import json
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
    """A decision on *binary* (not the hold of a container's first exec, which names the
    same binary, has no policy yet, and may or may not reach the output before a SIGKILL)."""
    def pred(ev: dict[str, Any]) -> bool:
        e = enforcement(ev)
        return (ev["type"] == "enforce" and e.get("binary") == binary
                and e.get("action") != "held"
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


# ---------------------------------------------------------------------------------------
# 10: a container started while the agent is down (spec.agentDown, docs/policy.md)

def down_policy(name: str, extra: str = "") -> str:
    return f"""apiVersion: moray/v1
kind: RuntimePolicy
metadata: {{name: {name}}}
spec:
  scope: {{containers: {{names: ['mr-dwn-*']}}}}
  exec: {{deny: [/bin/ls]}}
{extra}"""


LS_GATE_LS = ("/bin/ls / >/dev/null; echo rc1=$?; "
              "while [ ! -e /tmp/go ]; do /bin/sleep 0.1; done; /bin/ls / >/dev/null; echo rc2=$?")


def silent_ns(agent: AgentProc) -> int:
    """How long the agent's heartbeat (pinned mr_palive) has been silent."""
    import struct
    import time

    from moray.agent.bpf.pins import pinned_map

    m = pinned_map("mr_palive", agent.pin_root)
    assert m is not None
    try:
        raw = m.lookup(struct.pack("<I", 0))
    finally:
        os.close(m.fd)
    beat = struct.unpack("<Q", raw)[0] if raw else 0
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - beat


def wait_until(what: str, check: Any, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_and_wait_down(agent: AgentProc) -> None:
    """SIGKILL the agent, then wait until the kernel treats it as down (heartbeat > 2 s)."""
    agent.kill()
    wait_until("agent heartbeat stale", lambda: silent_ns(agent) > 2_200_000_000)


def state_of(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


def first_child(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def test_open_default_container_runs_uncovered_and_is_reported() -> None:
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("dwn-open", down_policy("dwn-open"))
        kill_and_wait_down(agent)
        with run_runc("mr-dwn-open", ["sh", "-c", LS_GATE_LS], start=True) as ctr:
            out = ctr.bundle.parent / "stdout"
            wait_until("first ls ran", lambda: "rc1=" in out.read_text())
            assert "rc1=0" in out.read_text()   # open: nothing applies while down
            agent.start()
            ev = agent.wait_event(lambda e: enforcement(e).get("action") == "uncovered")
            e = enforcement(ev)
            assert (e["policy"], e["rule"], e["policies"][0]["mode"]) == (
                "dwn-open", "agentDown: open", "enforce"), e
            assert "mr-dwn-open" in json.dumps(ev.get("container")), ev
            (ctr.bundle.parent / "rootfs" / "tmp" / "go").touch()
            assert "rc2=137" in ctr.wait().stdout  # covered from the agent's return on
    finally:
        agent.cleanup()


def test_closed_refuses_once_the_agent_is_gone_longer_than_the_hold() -> None:
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("dwn-shut", down_policy("dwn-shut", "  agentDown: closed\n"
                                                       "  agentDownHold: 0\n"))
        kill_and_wait_down(agent)
        with run_runc("mr-dwn-refused", ["sh", "-c", "echo ran"]) as ctr:
            res = ctr.wait()
        assert res.exit_code == 137 and "ran" not in res.stdout, res
        agent.start()
        e = enforcement(agent.wait_event(
            lambda ev: enforcement(ev).get("rule", "") == "agentDown: closed "
                                                          "(agentDownHold: 0s)"))
        assert (e["action"], e["policy"], e["policies"][0]["enforced"]) == (
            "killed", "dwn-shut", True), e
    finally:
        agent.cleanup()


def test_closed_holds_until_the_agent_is_back_then_decides() -> None:
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("dwn-hold", down_policy("dwn-hold", "  agentDown: closed\n"
                                                       "  agentDownHold: 120\n"))
        kill_and_wait_down(agent)
        with run_runc("mr-dwn-held", ["sh", "-c", LS_GATE_LS], start=True) as ctr:
            # the entrypoint (a child of runc init's pid after exec: the same pid) stops
            wait_until("entrypoint stopped", lambda: state_of(ctr.pid) == "T")
            out = ctr.bundle.parent / "stdout"
            assert "rc1" not in out.read_text()
            agent.start()   # decides the held task: sh is allowed, the container covered
            held = enforcement(agent.wait_event(
                lambda ev: enforcement(ev).get("action") == "held"))
            assert (held["policy"], held["rule"]) == (
                "dwn-hold", "agentDown: closed (agentDownHold: 120s)"), held
            wait_until("first ls ran", lambda: "rc1=" in out.read_text())
            (ctr.bundle.parent / "rootfs" / "tmp" / "go").touch()
            res = ctr.wait()
        # the first ls ran after the decision, in a classified container: killed
        assert "rc1=137" in res.stdout and "rc2=137" in res.stdout, res
    finally:
        agent.cleanup()


def test_closed_hold_never_outlives_its_bound_without_an_agent() -> None:
    """Nobody restarts the agent: its guard kills the held task once agentDownHold has
    passed (it is not stopped forever); the next agent reports it by name."""
    agent = AgentProc()
    try:
        agent.start()
        agent.apply("dwn-guard", down_policy("dwn-guard", "  agentDown: closed\n"
                                                         "  agentDownHold: 4\n"))
        kill_and_wait_down(agent)
        with run_runc("mr-dwn-guard", ["sh", "-c", "echo ran"], start=True) as ctr:
            res = ctr.wait(timeout=30)
        assert res.exit_code == 137 and "ran" not in res.stdout, res
        agent.start()
        e = enforcement(agent.wait_event(
            lambda ev: enforcement(ev).get("rule", "") == "agentDown: closed "
                                                          "(agentDownHold: 4s)"
            and enforcement(ev).get("action") == "killed"))
        assert e["policy"] == "dwn-guard", e
    finally:
        agent.cleanup()
