"""Enforcement while the agent is down, on whatever kernel this runs (issue 13, must-haves
9 and 10; tests/kernels/run-matrix runs it on the host, Debian 6.1 and 6.12). Root only.

* names survive a restart: a deny made while the agent was SIGKILLed (EPERM on the LSM
  tier, SIGKILL on the kill tier) is reported after the restart with its policy, rule and
  mode;
* agentDown: closed, the agent gone longer than agentDownHold: a new container's first
  exec is refused (EPERM / 137), nothing of it runs, reported by name after the restart;
* agentDown: open (default): the new container runs uncovered and, once the agent is
  back, an `uncovered` event names its policy; from then on it is covered.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import BUSYBOX, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture()
def agent() -> Iterator[AgentProc]:
    a = AgentProc()
    try:
        a.start()
        yield a
    finally:
        a.cleanup()


@pytest.fixture()
def tiers(agent: AgentProc) -> dict[str, str]:
    t: dict[str, str] = json.loads(agent.cli("probe", "--json").stdout)["tiers"]
    return t


@pytest.fixture()
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="moray-restart-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def silent_ns(agent: AgentProc) -> int:
    from moray.agent.bpf.pins import pinned_map

    m = pinned_map("mr_palive", agent.pin_root)
    assert m is not None
    try:
        raw = m.lookup(struct.pack("<I", 0))
    finally:
        os.close(m.fd)
    beat = struct.unpack("<Q", raw)[0] if raw else 0
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - beat


def kill_and_wait_down(agent: AgentProc) -> None:
    agent.kill()  # SIGKILL: pins stay
    wait_until("agent heartbeat stale", lambda: silent_ns(agent) > 2_200_000_000)


def exec_child(path: Path, *args: str) -> tuple[str, int]:
    """execv in a forked child: ("errno", n), ("signal", n) or ("exit", status)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.execv(path, [path.name, *args])
        except OSError as err:
            os.write(w, str(err.errno).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if data:
        return "errno", int(data)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    return "exit", os.WEXITSTATUS(status)


def where(action: str, **want: str) -> Callable[[dict[str, Any]], bool]:
    def pred(ev: dict[str, Any]) -> bool:
        e = enforcement(ev)
        return (ev.get("type") == "enforce" and e.get("action") == action
                and all(e.get(k) == v for k, v in want.items()))
    return pred


def down_policy(name: str, extra: str = "") -> str:
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
            "spec:\n  scope: {containers: {names: ['mr-gdwn-*']}}\n"
            f"  exec: {{deny: [/bin/ls]}}\n{extra}")


def test_names_survive_a_restart(agent: AgentProc, tiers: dict[str, str], work: Path) -> None:
    denied = work / "mr-denied"
    shutil.copy2(BUSYBOX, denied)
    agent.apply("g-rst", "apiVersion: moray/v1\nkind: RuntimePolicy\n"
                "metadata: {name: g-rst}\nspec:\n  scope: {host: true}\n"
                f"  exec: {{deny: ['{denied}']}}\n")
    agent.kill()
    got = exec_child(denied, "true")
    lsm = tiers["exec"] == "lsm-deny"
    assert got == (("errno", errno.EPERM) if lsm else ("signal", signal.SIGKILL)), got
    agent.start()
    e = enforcement(agent.wait_event(where("blocked" if lsm else "killed",
                                           binary=str(denied))))
    assert (e["policy"], e["rule"], e["policies"][0]["mode"]) == (
        "g-rst", f"exec.deny: {denied}", "enforce"), e


def test_closed_refuses_a_new_container_once_the_hold_has_passed(
        agent: AgentProc, tiers: dict[str, str]) -> None:
    agent.apply("g-shut", down_policy("g-shut", "  agentDown: closed\n  agentDownHold: 0\n"))
    kill_and_wait_down(agent)
    try:
        with run_runc("mr-gdwn-refused", ["sh", "-c", "echo ran"]) as ctr:
            res = ctr.wait()
        refused_at = "entrypoint"
        assert res.exit_code != 0 and "ran" not in res.stdout, res
        if tiers["exec"] == "lsm-deny":
            assert "not permitted" in res.stderr.lower(), res
        else:
            assert res.exit_code == 137, res
    except RuntimeError as err:  # refused at runc init's own re-exec in the new cgroup
        refused_at = f"runc init: {err}"
    agent.start()
    action = "blocked" if tiers["exec"] == "lsm-deny" else "killed"
    e = enforcement(agent.wait_event(
        where(action, rule="agentDown: closed (agentDownHold: 0s)")))
    assert e["policy"] == "g-shut" and e["policies"][0]["enforced"], (e, refused_at)


def test_open_container_runs_uncovered_and_is_reported(
        agent: AgentProc, tiers: dict[str, str]) -> None:
    agent.apply("g-open", down_policy("g-open"))
    kill_and_wait_down(agent)
    script = ("/bin/ls / >/dev/null; echo rc1=$?; "
              "while [ ! -e /tmp/go ]; do /bin/sleep 0.1; done; /bin/ls / >/dev/null; echo rc2=$?")
    with run_runc("mr-gdwn-open", ["sh", "-c", script], start=True) as ctr:
        out = ctr.bundle.parent / "stdout"
        wait_until("first ls ran", lambda: "rc1=" in out.read_text())
        assert "rc1=0" in out.read_text()
        agent.start()
        e = enforcement(agent.wait_event(where("uncovered")))
        assert (e["policy"], e["rule"]) == ("g-open", "agentDown: open"), e
        (ctr.bundle.parent / "rootfs" / "tmp" / "go").touch()
        res = ctr.wait()
    want = "rc2=126" if tiers["exec"] == "lsm-deny" else "rc2=137"
    assert want in res.stdout, res
