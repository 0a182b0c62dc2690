"""Enforcement outlives the agent (pinned in bpffs), a restarted agent adopts it, and
`moray-agent unload` removes it. Real runc containers; root only."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

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


SYS_POLICY = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: pin-sys}
spec:
  scope: {containers: {names: ['mr-pinsys-*']}}
  syscalls: {deny: [unshare]}
"""

UNSHARE = "/bin/unshare -U true; echo rc=$?"


def enf_sys_links() -> int:
    """BPF links whose program is mr_enf_sys (any agent's), from bpftool."""
    def show(kind: str) -> list[dict[str, object]]:
        r = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True,
                           check=True)
        return json.loads(r.stdout or "[]")  # type: ignore[no-any-return]
    names = {p["id"]: p.get("name") for p in show("prog")}
    return sum(1 for link in show("link") if names.get(link.get("prog_id")) == "mr_enf_sys")


def test_syscall_program_attached_only_while_a_syscall_rule_is_live() -> None:
    """mr_enf_sys runs on every syscall of the host: it is attached (and pinned) only while
    a policy has a syscall rule, stays attached across an agent SIGKILL and restart, and
    goes when the last such rule goes."""
    base = enf_sys_links()
    with AgentProc() as agent:
        assert enf_sys_links() == base  # no policy: not attached
        agent.apply("pin-sys", SYS_POLICY)
        assert enf_sys_links() == base + 1
        pins = list(Path(agent.pin_root).glob("links-*/mr_enf_sys"))
        assert len(pins) == 1
        with run_runc("mr-pinsys-1", ["sh", "-c", UNSHARE]) as ctr:
            assert "rc=137" in ctr.wait().stdout

        agent.kill()  # SIGKILL: the pinned link keeps enforcing
        assert enf_sys_links() == base + 1
        agent.start()  # returns once its policies are applied
        agent.wait_log("on-demand program attached", count=2)
        assert enf_sys_links() == base + 1  # the restarted agent's own link replaced it
        with run_runc("mr-pinsys-2", ["sh", "-c", UNSHARE]) as ctr:
            assert "rc=137" in ctr.wait().stdout

        agent.delete("pin-sys")
        assert enf_sys_links() == base
        assert not list(Path(agent.pin_root).glob("links-*/mr_enf_sys"))
        with run_runc("mr-pinsys-3", ["sh", "-c", UNSHARE]) as ctr:
            assert "rc=0" in ctr.wait().stdout
