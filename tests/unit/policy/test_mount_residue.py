"""Mount calls under a syscall rule (issue 13): the explanation of their records and the
decisions of agent/policy/mount_residue.py that need no kernel (which calls are looked
at, the target, mountinfo). The detach itself is tested against real containers:
tests/integration/test_enforce_sysargs.py, tests/kernels/guest_tests/test_mount.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent, Proc
from moray.agent.policy.explain import explain
from moray.agent.policy.inroot import target_of
from moray.agent.policy.mount_residue import makes_mount, mountinfo
from moray.agent.policy.residue import Residue
from moray.api.policy.load import load_text

PROC = Proc(pid=40, tid=40, ppid=1, uid=0, euid=0, gid=0, mntns=1, cgroup_id=7,
            start_ns=5, pstart_ns=1, comm="sh")
POLICY = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: mnt}
spec:
  scope: {containers: {names: ['*']}}
  syscalls: {deny: [mount, move_mount, umount2, fsmount, mount_setattr]}
"""
E, A = abi.EKind, abi.EAction


def ev(nr: int, action: int = A.KILLED, *, path: str = "", path2: str = "",
       flags: int = 0, ret: int | None = 0) -> EnforceEvent:
    return EnforceEvent(ts=1, proc=PROC, kind=E.SYSCALL, action=action, policies=1,
                        enforced=0 if action == A.WOULD_BLOCK else 1, arg=nr,
                        family=abi.ES_RESULT, daddr=None, dport=0, path=path, path2=path2,
                        value=flags, ret=ret)


def test_target_and_what_makes_a_mount() -> None:
    assert target_of(ev(165, path="/", path2="/mnt/a")) == "/mnt/a"
    assert target_of(ev(165, path="/work", path2="d")) == "/work/d"
    assert target_of(ev(429, path="/mnt/b")) == "/mnt/b"  # MOVE_MOUNT_T_EMPTY_PATH
    assert makes_mount(ev(165, flags=0x8000)) and makes_mount(ev(165, flags=0x1000))
    assert makes_mount(ev(165, flags=0x2000))  # MS_MOVE
    assert not makes_mount(ev(165, flags=0x20 | 0x1000))  # bind remount
    assert not makes_mount(ev(165, flags=1 << 18))  # MS_PRIVATE
    assert makes_mount(ev(429)) and not makes_mount(ev(432)) and not makes_mount(ev(166))


def test_explanation() -> None:
    slots = {0: load_text(POLICY, "mnt.yaml")[0]}
    tiers = {"syscall": "kill-after"}
    ok = explain(ev(165, path2="/mnt/a", flags=0x8000), slots, tiers)
    assert ok["result"] == "ok" and ok["path"] == "/mnt/a" and ok["flags"] == "0x8000"
    assert ok["rule"] == "syscalls.deny: mount" and ok["tier"] == "kill-after"
    assert "`undone` what the agent detached" in ok["note"]
    failed = explain(ev(165, path2="/data", ret=-19), slots, tiers)
    assert failed["result"] == "ENODEV" and "nothing was changed" in failed["note"]
    lsm = explain(ev(429, A.BLOCKED, path="/mnt/b", ret=-1), slots, tiers)
    assert lsm["tier"] == "lsm-deny" and lsm["result"] == "EPERM" and lsm["path"] == "/mnt/b"
    plain = explain(EnforceEvent(1, PROC, E.SYSCALL, A.KILLED, 1, 1, 101, 0, None, 0, "",
                                 ""), slots, tiers)
    assert "result" not in plain and "path" not in plain


def residue(e: EnforceEvent, tmp: Path) -> dict[str, Any]:
    enf: dict[str, Any] = {}
    Residue(proc=str(tmp), wait=0)(e, enf)
    return enf


def test_calls_that_leave_nothing_or_cannot_be_undone(tmp_path: Path) -> None:
    # failed: nothing changed, nothing looked at
    assert residue(ev(165, path2="/etc/hosts", ret=-1), tmp_path) == {"left": [],
                                                                       "undone": []}
    # a detached mount held by the killed process's descriptor
    assert residue(ev(432, ret=3), tmp_path) == {"left": [], "undone": []}
    um = residue(ev(166, path2="/data"), tmp_path)
    assert um["left"] == [{"path": "/data", "what": "unmounted"}] and um["undone"] == []
    assert "cannot be undone" in um["unchecked"]
    rm = residue(ev(165, path2="/", flags=0x20 | 0x1), tmp_path)
    assert rm["left"] == [{"path": "/", "what": "mount attributes changed"}]
    # a new mount, but no process of the namespace left to look through
    gone = residue(ev(165, path2="/mnt/a"), tmp_path)
    assert gone["left"] == [] and "no live process" in gone["unchecked"]
    # monitor mode and the LSM tier: nothing to repair
    assert residue(ev(165, A.WOULD_BLOCK, path2="/mnt/a"), tmp_path) == {}
    assert residue(ev(165, A.BLOCKED, path="/mnt/a", ret=-1), tmp_path) == {}


def test_mountinfo(tmp_path: Path) -> None:
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "mountinfo").write_text(
        "25 1 0:23 / / rw - overlay overlay rw\n"
        "48 25 0:40 / /mnt/my\\040dir rw,relatime - tmpfs none rw\n"
        "59 25 254:0 /tmp/x /etc/passwd rw shared:1 - ext4 /dev/vda rw\n")
    got = mountinfo(str(tmp_path), 9)
    assert got[48] == {"mountpoint": "/mnt/my dir", "fstype": "tmpfs", "source": "none"}
    assert got[59]["mountpoint"] == "/etc/passwd" and got[59]["source"] == "/dev/vda"
