"""Namespace and setid rules on whatever kernel this runs (issue 13, must-have 6): the
kernel matrix boots Debian 6.1 and 6.12 under qemu, where BPF LSM is usable, and runs this
module on the host too (kill tiers). Root only; real runc containers scoped by name.

Tier promises (docs/policy.md):
  namespaces  user namespaces: lsm-deny (lsm/userns_create: unshare / clone / clone3 fail
              with EPERM, nothing is created) where BPF LSM is usable, else killed; other
              types and setns: killed on every tier (no LSM hook); a clone / clone3 is
              killed before the fork completes (no child).
  setid       lsm-deny (path_chmod, path_mknod, inode_setxattr: EPERM, the mode / the
              capability is never set, a new setuid file never created) where BPF LSM is
              usable; else kill-after: the call ran, the agent clears what it set and
              the enforce event lists it under `left` and `undone`.
Monitor mode lets each through and reports would-block. Container start-up (runc creating
the namespaces in the container's cgroup) and `runc exec` (setns) are never stopped.

The C variants need tests/fixtures/c/bin/sysargs (static), built on the host by
tests/helpers/sysargs.py (any host run of this module or of
tests/integration/test_enforce_sysargs.py); the matrix copies it into its guests.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import WAIT_GO, run_runc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

CAPS = "security.capability"


def ctr_policy(name: str, names: str, body: str, mode: str = "enforce") -> str:
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  scope: {{containers: {{names: ['{names}']}}}}\n  mode: {mode}\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines()))


def ours(agent: AgentProc, cid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in agent.events() if e.get("type") == "enforce"
            and (e.get("container") or {}).get("id") == cid
            and enforcement(e).get("kind") == kind]


def wait_n(agent: AgentProc, cid: str, kind: str, n: int,
           timeout: float = 30) -> list[dict[str, Any]]:
    """The container's enforce events of *kind* once there are *n* (reads the output
    once per poll: it grows large on a slow guest)."""
    deadline = time.monotonic() + timeout
    while len(got := ours(agent, cid, kind)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)} of {n} {kind} events: "
                               f"{[enforcement(e) for e in got]}")
        time.sleep(0.1)
    return got


def rcs(stdout: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return {k: v for k, v in pairs if v.isdigit()}


def lsm(tiers: dict[str, str]) -> bool:
    return tiers.get("setid") == "lsm-deny"


def has_caps(p: Path) -> bool:
    try:
        os.getxattr(p, CAPS)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ namespaces


NS_SCRIPT = """
/bin/unshare -U true; echo unshare-U=$?
/bin/sysargs clone user; echo clone-user=$?
/bin/sysargs clone3 user; echo clone3-user=$?
/bin/sysargs unshare uts; echo unshare-uts=$?
/bin/sysargs setns /proc/1/ns/uts 0; echo setns0-uts=$?
/bin/sysargs unshare ipc; echo unshare-ipc=$?
echo done=0
"""


def test_namespaces(agent: AgentProc, tiers: dict[str, str], rootfs: Path) -> None:
    agent.apply("g-ns", ctr_policy("g-ns", "mr-gns-*", "namespaces: {deny: [user, uts]}"))
    try:
        with run_runc("mr-gns-1", ["sh", "-c", NS_SCRIPT], rootfs=rootfs) as ctr:
            res = ctr.wait()
        rc = rcs(res.stdout)
        evs = wait_n(agent, "mr-gns-1", "namespaces", 5)
        why = (res, [enforcement(e) for e in evs])
        assert rc.get("done") == "0", why
        for v in ("unshare-U", "clone-user", "clone3-user"):
            # LSM: EPERM before the namespace exists (the programs print err 1 / exit 1)
            assert rc.get(v) == ("1" if lsm(tiers) else "137"), (v, why)
        for v in ("unshare-uts", "setns0-uts"):  # no LSM hook: killed on every tier
            assert rc.get(v) == "137", (v, why)
        assert rc.get("unshare-ipc") != "137", why  # not denied
        assert not list((rootfs / "tmp").glob("child-*")), "a clone child ran"
        if lsm(tiers):
            assert "unshare(0x10000000): Operation not permitted" in res.stderr, why
        user = [enforcement(e) for e in evs if enforcement(e)["namespaces"] == ["user"]]
        assert {e["syscall"] for e in user} >= {"unshare", "clone", "clone3"}, why
        for e in user:
            assert e["action"] == ("blocked" if lsm(tiers) else "killed"), e
            assert e["tier"] == ("lsm-deny" if lsm(tiers) else "kill-after"), e
            assert e["rule"] == "namespaces.deny: user", e
        uts = [enforcement(e) for e in evs if enforcement(e)["namespaces"] == ["uts"]]
        assert {e["syscall"] for e in uts} == {"unshare", "setns"}, why
        assert all(e["action"] == "killed" for e in uts), why
    finally:
        agent.delete("g-ns")


def test_namespaces_monitor(agent: AgentProc, rootfs: Path) -> None:
    agent.apply("g-nsm", ctr_policy("g-nsm", "mr-gnsm-*", "namespaces: {deny: [user]}",
                                    mode="monitor"))
    try:
        script = "/bin/unshare -U true; echo unshare-U=$?; /bin/sysargs clone3 user; echo c=$?"
        with run_runc("mr-gnsm-1", ["sh", "-c", script], rootfs=rootfs) as ctr:
            res = ctr.wait()
        assert rcs(res.stdout) == {"unshare-U": "0", "c": "0"}, res
        assert (rootfs / "tmp" / "child-clone3").exists()
        for e in wait_n(agent, "mr-gnsm-1", "namespaces", 2):
            assert enforcement(e)["action"] == "would-block", enforcement(e)
    finally:
        agent.delete("g-nsm")


def test_container_start_and_runc_exec_go_on(agent: AgentProc, rootfs: Path) -> None:
    """runc creates the namespaces in the container's cgroup and `runc exec` joins them
    with setns: neither is the workload, neither is stopped."""
    agent.apply("g-all", ctr_policy("g-all", "mr-gall-*",
                                    "namespaces: {deny: [all]}\nsetid: {deny: [all]}"))
    try:
        with run_runc("mr-gall-1", ["sh", "-c", "echo started=0; " + WAIT_GO],
                      rootfs=rootfs) as ctr:
            ctr.start()
            agent.wait_event(lambda e: e.get("type") == "exec"
                             and (e.get("container") or {}).get("id") == "mr-gall-1", 20)
            ex = ctr.runc("exec", "mr-gall-1", "/bin/sh", "-c", "touch /tmp/go; echo exec=0")
            res = ctr.wait()
        assert ex.returncode == 0 and "exec=0" in ex.stdout, ex
        assert rcs(res.stdout) == {"started": "0"}, res
        assert not ours(agent, "mr-gall-1", "namespaces"), [
            enforcement(e) for e in ours(agent, "mr-gall-1", "namespaces")]
    finally:
        agent.delete("g-all")


# ------------------------------------------------------------------ setid


SETID = {  # name -> (command, file, what it asks for)
    "chmod-us": ("chmod u+s /tmp/a", "a", "setuid"),
    "fchmod": ("/bin/sysargs fchmod /tmp/c 4755", "c", "setuid"),
    "fchmodat2-fd": ("/bin/sysargs fchmodat2-fd /tmp/e 2755", "e", "setgid"),
    "creat": ("/bin/sysargs creat /tmp/f 4755", "f", "setuid"),
    "mknod": ("/bin/sysargs mknod /tmp/g 4755", "g", "setuid"),
    "setcap": ("/bin/sysargs setcap /tmp/h", "h", "caps"),
    "fsetcap": ("/bin/sysargs fsetcap /tmp/i", "i", "caps"),
}


def has_fchmodat2() -> bool:
    """fchmodat2 is Linux 6.6+ (Debian 6.1 answers ENOSYS: nothing to enforce)."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 6)


def test_setid(agent: AgentProc, tiers: dict[str, str], rootfs: Path) -> None:
    agent.apply("g-setid", ctr_policy("g-setid", "mr-gsid-*", "setid: {deny: [all]}"))
    variants = {n: v for n, v in SETID.items() if has_fchmodat2() or "fchmodat2" not in n}
    try:
        script = "\n".join(
            ["for f in a b c e h i; do cp /bin/busybox /tmp/$f; chmod 755 /tmp/$f; done"]
            + [f"{cmd}; echo {n}=$?" for n, (cmd, _f, _w) in variants.items()]
            # a plain chmod goes on; not of /tmp/a: it would clear the bit the agent has
            # yet to find when its pipeline runs behind (`left` empty, seen under load)
            + ["chmod 700 /tmp/b; echo plain=$?", WAIT_GO])
        with run_runc("mr-gsid-1", ["sh", "-c", script], rootfs=rootfs,
                      caps=["CAP_SETFCAP"]) as ctr:
            ctr.start()
            evs = wait_n(agent, "mr-gsid-1", "setid", len(variants))
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait()
        rc = rcs(res.stdout)
        details = [enforcement(e) for e in evs]
        why = (res, details)
        assert rc.get("plain") == "0", why
        for name, (_cmd, f, what) in variants.items():
            assert rc.get(name) == ("1" if lsm(tiers) else "137"), (name, why)
            host = rootfs / "tmp" / f
            if host.exists():
                assert not host.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), name
                assert not has_caps(host), name
            mine = [d for d in details if d["path"].endswith("/" + f) or d["path"] == f]
            assert mine and what in mine[0]["setid"], (name, why)
            d = mine[0]
            if lsm(tiers):
                assert d["action"] == "blocked" and d["tier"] == "lsm-deny", d
            else:
                assert d["action"] == "killed" and d["tier"] == "kill-after", d
                assert what in {x["what"] for x in d["left"]}, d
                assert d["undone"], d
        if lsm(tiers):  # refused before the new file existed
            assert not (rootfs / "tmp" / "f").exists() and not (rootfs / "tmp" / "g").exists()
    finally:
        agent.delete("g-setid")


def test_setid_monitor(agent: AgentProc, rootfs: Path) -> None:
    agent.apply("g-sidm", ctr_policy("g-sidm", "mr-gsidm-*", "setid: {deny: [setuid]}",
                                     mode="monitor"))
    try:
        script = "cp /bin/busybox /tmp/a; chmod u+s /tmp/a; echo chmod-us=$?"
        with run_runc("mr-gsidm-1", ["sh", "-c", script], rootfs=rootfs) as ctr:
            res = ctr.wait()
        assert rcs(res.stdout) == {"chmod-us": "0"}, res
        assert (rootfs / "tmp" / "a").stat().st_mode & stat.S_ISUID
        e = enforcement(wait_n(agent, "mr-gsidm-1", "setid", 1)[0])
        assert e["action"] == "would-block" and "undone" not in e, e
    finally:
        agent.delete("g-sidm")
