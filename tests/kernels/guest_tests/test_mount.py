"""Mount calls under a syscall deny on whatever kernel this runs (issue 13, must-haves 5
and 6): the kernel matrix boots Debian 6.1 and 6.12 under qemu, where BPF LSM is usable,
and runs this module on the host too (kill tiers). Root only; real runc containers with
CAP_SYS_ADMIN, scoped by name.

Tier promises (docs/policy.md, "Mount calls"):
  LSM tier (BPF LSM usable: lsm/sb_mount, lsm/move_mount, lsm/sb_umount): mount(2) and
      move_mount(2) fail with EPERM before anything is mounted; the enforce event says
      blocked / lsm-deny with the target and `result: EPERM`.
  kill tier: the call ran and the task dies when it returns; the event is written at the
      call's exit with its result; the agent lists what it mounted under `left` and
      detaches it inside the container's mount namespace (`undone`). A call that failed
      leaves nothing and nothing is detached.
Either way, after the event the mount is not in the container's mount table. Monitor mode
lets each through and reports would-block; nothing is undone.

The new-API variants need tests/fixtures/c/bin/sysargs (static), built on the host by
tests/helpers/sysargs.py; the matrix copies it into its guests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.agent_proc import AgentProc, enforcement
from tests.helpers.containers import WAIT_GO, run_runc
from tests.helpers.sysargs import mountpoints
from tests.kernels.guest_tests.test_sysargs import ctr_policy, lsm, rcs, wait_n

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

VARIANTS = {  # name -> (command, syscall, target)
    "tmpfs": ("mount -t tmpfs none /mnt/a", "mount", "/mnt/a"),
    "bind-file": ("mount --bind /tmp/x /etc/passwd", "mount", "/etc/passwd"),
    "fsmount": ("/bin/sysargs fsmount /mnt/b", "move_mount", "/mnt/b"),
    "clonetree": ("/bin/sysargs clonetree /tmp /mnt/c", "move_mount", "/mnt/c"),
}
DATA_TMPFS: dict[str, object] = {"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                                 "options": ["nosuid", "size=1m"]}


def script(variants: dict[str, tuple[str, str, str]], failing: bool = True) -> str:
    lines = ["mkdir -p /mnt/a /mnt/b /mnt/c; echo secret > /tmp/x"]
    lines += [f"{cmd}; echo {n}=$?" for n, (cmd, _s, _t) in variants.items()]
    if failing:  # no such file system type: fails on the kill tier, refused on the LSM one
        lines += ["mount -t nosuchfs none /data; echo failed=$?"]
    lines += [WAIT_GO, "echo MOUNTINFO; cat /proc/self/mountinfo"]
    return "\n".join(lines)


def test_mount(agent: AgentProc, tiers: dict[str, str], rootfs: Path) -> None:
    agent.apply("g-mnt", ctr_policy("g-mnt", "mr-gmnt-*", "syscalls: {deny: [mount, move_mount]}"))
    try:
        with run_runc("mr-gmnt-1", ["sh", "-c", script(VARIANTS)], rootfs=rootfs,
                      caps=["CAP_SYS_ADMIN"], mounts=[DATA_TMPFS]) as ctr:
            ctr.start()
            evs = wait_n(agent, "mr-gmnt-1", "syscall", len(VARIANTS) + 1, timeout=60)
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait(60)
        rc = rcs(res.stdout)
        details = [enforcement(e) for e in evs]
        why = (res, details)
        by_path = {d.get("path"): d for d in details}
        for name, (_cmd, syscall, target) in VARIANTS.items():
            d = by_path.get(target)
            assert d is not None, (name, sorted(map(str, by_path)), why)
            assert d["syscall"] == syscall and d["rule"] == f"syscalls.deny: {syscall}", d
            if lsm(tiers):  # refused before anything was mounted
                assert rc.get(name) not in (None, "0", "137"), (name, why)
                assert d["action"] == "blocked" and d["tier"] == "lsm-deny", d
                assert d["result"] == "EPERM" and "undone" not in d, d
            else:
                assert rc.get(name) == "137", (name, why)
                assert d["action"] == "killed" and d["tier"] == "kill-after", d
                assert d["result"] == "ok" and "unchecked" not in d, d
                assert [x["what"] for x in d["left"]] == ["mount"], d
                assert [x["what"] for x in d["undone"]] == ["mount detached"], d
        failed = by_path["/data"]
        if lsm(tiers):
            assert rc.get("failed") not in (None, "0", "137"), why
            assert failed["action"] == "blocked" and failed["result"] == "EPERM", failed
        else:
            assert rc.get("failed") == "137", why
            assert failed["result"] == "ENODEV" and failed["left"] == [], failed
            assert failed["undone"] == [], failed
        points = mountpoints(res.stdout)
        assert "/data" in points, res.stdout  # runc's own mount stays
        for _cmd, _s, target in VARIANTS.values():
            assert target not in points, (target, points)
        assert (rootfs / "etc" / "passwd").read_text().startswith("root:")
    finally:
        agent.delete("g-mnt")


def test_umount_denied(agent: AgentProc, tiers: dict[str, str], rootfs: Path) -> None:
    """umount2 under a deny: refused on the LSM tier (the mount stays); on the kill tier
    it ran (the mount is gone) and the event says so: an unmount cannot be undone."""
    agent.apply("g-umnt", ctr_policy("g-umnt", "mr-gumnt-*", "syscalls: {deny: [umount2]}"))
    try:
        lines = ["umount /data; echo umount=$?", WAIT_GO,
                 "echo MOUNTINFO; cat /proc/self/mountinfo"]
        with run_runc("mr-gumnt-1", ["sh", "-c", "\n".join(lines)], rootfs=rootfs,
                      caps=["CAP_SYS_ADMIN"], mounts=[DATA_TMPFS]) as ctr:
            ctr.start()
            d = enforcement(wait_n(agent, "mr-gumnt-1", "syscall", 1, timeout=60)[0])
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait(60)
        rc = rcs(res.stdout)
        assert d["syscall"] == "umount2" and d["path"] == "/data", d
        if lsm(tiers):
            assert rc.get("umount") not in (None, "0", "137"), res
            assert d["action"] == "blocked" and d["result"] == "EPERM", d
            assert "/data" in mountpoints(res.stdout), res.stdout
        else:
            assert rc.get("umount") == "137", res
            assert d["action"] == "killed" and d["result"] == "ok", d
            assert d["left"] == [{"path": "/data", "what": "unmounted"}], d
            assert d["undone"] == [] and "cannot be undone" in d["unchecked"], d
    finally:
        agent.delete("g-umnt")


def test_mount_monitor(agent: AgentProc, rootfs: Path) -> None:
    """Monitor mode on every tier: the mounts are made, would-block, nothing undone."""
    agent.apply("g-mntm", ctr_policy("g-mntm", "mr-gmntm-*",
                                     "syscalls: {deny: [mount, move_mount]}", mode="monitor"))
    variants = {k: VARIANTS[k] for k in ("tmpfs", "fsmount")}
    try:
        with run_runc("mr-gmntm-1", ["sh", "-c", script(variants, failing=False)],
                      rootfs=rootfs, caps=["CAP_SYS_ADMIN"]) as ctr:
            ctr.start()
            evs = wait_n(agent, "mr-gmntm-1", "syscall", 2, timeout=60)
            (rootfs / "tmp" / "go").touch()
            res = ctr.wait(60)
        rc = rcs(res.stdout)
        assert rc.get("tmpfs") == "0" and rc.get("fsmount") == "0", res
        points = mountpoints(res.stdout)
        assert "/mnt/a" in points and "/mnt/b" in points, points
        for e in evs:
            d = enforcement(e)
            assert d["action"] == "would-block" and "undone" not in d, d
            assert d["result"] == "ok", d
    finally:
        agent.delete("g-mntm")
