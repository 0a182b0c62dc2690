"""What a killed mount call left behind, and detaching it (issue 13, must-have 5).

On the kill-after tier a mount-family syscall under a `syscalls: deny` rule runs before the
SIGKILL lands: the mount IS made. The kernel writes the enforce record at the call's exit
(bpf/progs/enforce_sys.bpf.c, MR_ES_RESULT) with its return value, its flags and its
target: the path as passed, with the directory a relative one starts from (move_mount:
to_dfd + to_path). agent/policy/residue.py `Residue` hands these records here; this adds
to the event's `enforcement` object, as for setid:

  left       what the killed call left ({path, what: "mount", fstype, source, mount_id};
             {path, what: "unmounted" | "mount attributes changed"})
  undone     what the agent changed back ({path, what: "mount detached"})
  unchecked  why it could not look or undo (no live process in that mount namespace, an
             unmount cannot be undone, ...)

Which mount is the killed call's: only a call that **returned success** and made a mount
at a place (mount(2) other than a remount or a propagation change, including bind and
MS_MOVE; move_mount, which attaches an fsmount / open_tree(OPEN_TREE_CLONE) tree or moves
one) is looked at; its mount is then the topmost mount at the target. A failed call
(EPERM without CAP_SYS_ADMIN, EINVAL, ...) leaves nothing and nothing is touched, so a
legitimate mount that was already at the target (runc's bind of /etc/hosts) is never
detached for a failed attempt. fsmount / open_tree alone make a detached mount held by a
descriptor of the killed process: it is freed with it (left: []).

How it looks and detaches, without trusting the container's file system: after the killed
process has exited, the target is opened O_PATH inside the root of a live process of the
same mount namespace (/proc/<pid>/root, openat2 RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS:
a symlink or `..` in the container cannot point the agent at a host path). statx says
whether that file is the root of a mount (STATX_ATTR_MOUNT_ROOT) and its mount id; the
mount is named from /proc/<pid>/mountinfo. The agent is multi-threaded and setns(CLONE_NEWNS)
needs a single-threaded caller, so a short-lived child (the agent's own Python, no code
from the container) gets the namespace's descriptor, that O_PATH descriptor and the host's
/proc, enters the namespace and detaches exactly that mount: umount2("self/fd/N",
MNT_DETACH) relative to the host's /proc (the magic link is the mount the agent opened, not
a path resolved again). `undone` is written only when that mount id is gone from
mountinfo afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from moray.agent.events.types import EnforceEvent
from moray.agent.policy.inroot import open_in_root, target_of

if TYPE_CHECKING:
    from moray.agent.policy.residue import Residue

log = logging.getLogger(__name__)

MOUNT_NRS = {165: "mount", 166: "umount2", 428: "open_tree", 429: "move_mount",
             432: "fsmount", 442: "mount_setattr"}
MS_REMOUNT = 0x20
MS_PROPAGATION = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20)  # UNBINDABLE PRIVATE SLAVE SHARED
OPEN_TREE_CLONE = 1

_SYS_STATX = 332
_AT_EMPTY_PATH = 0x1000
_STATX_MNT_ID = 0x1000
_STATX_ATTR_MOUNT_ROOT = 0x2000
_CLONE_NEWNS = 0x00020000

# the child that detaches: setns into the mount namespace, then umount2 of the mount the
# agent opened, through the host's /proc (it is no longer the child's root)
_DETACH = """
import ctypes, os, sys
ns, fd, proc = (int(a) for a in sys.argv[1:4])
libc = ctypes.CDLL(None, use_errno=True)
if libc.setns(ns, 0x00020000) != 0:
    print("setns", ctypes.get_errno()); sys.exit(1)
os.fchdir(proc)
if libc.umount2(("self/fd/%d" % fd).encode(), 2) != 0:
    print("umount2", ctypes.get_errno()); sys.exit(1)
"""


def is_mount_call(ev: EnforceEvent) -> bool:
    return ev.arg in MOUNT_NRS


def makes_mount(ev: EnforceEvent) -> bool:
    """Whether the call, when it succeeds, attaches a mount at its target."""
    name = MOUNT_NRS.get(ev.arg)
    if name == "move_mount":
        return True
    return name == "mount" and not ev.value & (MS_REMOUNT | MS_PROPAGATION)


class _Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("pad1", ctypes.c_uint8 * 128),
                ("mnt_id", ctypes.c_uint64), ("pad2", ctypes.c_uint8 * 104)]


_libc = ctypes.CDLL(None, use_errno=True)


def mount_of(fd: int) -> tuple[bool, int]:
    """(is the root of a mount, mount id) of an open file. Raises OSError."""
    st = _Statx()
    r = _libc.syscall(_SYS_STATX, fd, b"", _AT_EMPTY_PATH, _STATX_MNT_ID, ctypes.byref(st))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return bool(st.attributes & _STATX_ATTR_MOUNT_ROOT), int(st.mnt_id)


def _unescape(s: str) -> str:
    """mountinfo's octal escapes (\\040 for a space ...)."""
    if "\\" not in s:
        return s
    return s.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def mountinfo(proc: str, pid: int) -> dict[int, dict[str, str]]:
    """Mount id -> {mountpoint, fstype, source} of /proc/<pid>/mountinfo. Raises OSError."""
    out: dict[int, dict[str, str]] = {}
    with open(f"{proc}/{pid}/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            a, b = head.split(), tail.split()
            if len(a) < 5 or len(b) < 2:
                continue
            out[int(a[0])] = {"mountpoint": _unescape(a[4]), "fstype": b[0],
                              "source": _unescape(b[1])}
    return out


def live_pid(proc: str, mntns: int, hint: int = 0) -> int | None:
    """A live process in mount namespace *mntns* (*hint* first)."""
    want = f"mnt:[{mntns}]"
    pids = [str(hint)] if hint else []
    with contextlib.suppress(OSError):
        pids += [p for p in os.listdir(proc) if p.isdigit()]
    for p in pids:
        try:
            if os.readlink(f"{proc}/{p}/ns/mnt") != want:
                continue
            os.stat(f"{proc}/{p}/root/")  # a zombie's root is gone
        except OSError:
            continue
        return int(p)
    return None


def detach(proc: str, pid: int, mntns: int, fd: int) -> str | None:
    """Detach the mount whose root *fd* is, inside the mount namespace of *pid* (checked
    to be *mntns*). None when done, else why not."""
    ns = os.open(f"{proc}/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(ns).st_ino != mntns:
            return "the process left the mount namespace"
        host_proc = os.open(proc, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            exe = sys.executable or "/usr/bin/python3"
            r = subprocess.run([exe, "-I", "-S", "-c", _DETACH, str(ns), str(fd),
                                str(host_proc)], pass_fds=(ns, fd, host_proc),
                               capture_output=True, text=True, timeout=10, check=False)
        finally:
            os.close(host_proc)
    finally:
        os.close(ns)
    if r.returncode != 0:
        why = r.stdout.split()
        if len(why) == 2 and why[1].isdigit():
            return f"{why[0]}: {os.strerror(int(why[1]))}"
        return f"detach failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-200:]}"
    return None


def mount_residue(res: Residue, ev: EnforceEvent, enf: dict[str, Any]) -> None:
    """`left`, `undone`, `unchecked` of a killed mount-family call (see the module doc)."""
    left: list[dict[str, Any]] = []
    undone: list[dict[str, Any]] = []
    enf["left"], enf["undone"] = left, undone
    name = MOUNT_NRS[ev.arg]
    if ev.ret is None:
        enf["unchecked"] = "the call's result was not recorded"
        return
    if ev.ret < 0 or name in ("fsmount", "open_tree"):
        return  # failed: nothing changed; detached mounts died with the process's fds
    path = target_of(ev)
    if name == "umount2":
        left.append({"path": path, "what": "unmounted"})
        enf["unchecked"] = "an unmount cannot be undone: what was mounted there is not known"
        return
    if not makes_mount(ev):
        left.append({"path": path, "what": "mount attributes changed"})
        enf["unchecked"] = ("a remount, propagation or attribute change is not undone: the "
                            "previous attributes are not known")
        return
    res.wait_gone(ev.proc.pid)
    pid = live_pid(res.proc, ev.proc.mntns, ev.proc.ppid)
    if pid is None:
        enf["unchecked"] = ("no live process in the mount namespace to look through (the "
                            "namespace and its mounts go with its last process)")
        return
    try:

        fd = open_in_root(f"{res.proc}/{pid}/root", path, follow=True)
    except OSError as err:
        enf["unchecked"] = f"{path}: {err.strerror}"
        return
    try:
        is_root, mnt_id = mount_of(fd)
        if not is_root:  # unmounted again meanwhile: nothing there
            return
        info = mountinfo(res.proc, pid).get(mnt_id, {})
        left.append({"path": path, "what": "mount", "fstype": info.get("fstype"),
                     "source": info.get("source"), "mount_id": mnt_id})
        why = detach(res.proc, pid, ev.proc.mntns, fd)
        if why is not None:
            enf["unchecked"] = f"{path}: {why}"
            log.warning("mount residue not detached",
                        extra={"path": path, "mount_id": mnt_id, "error": why})
            return
        if mnt_id not in mountinfo(res.proc, pid):
            undone.append({"path": path, "what": "mount detached", "mount_id": mnt_id})
        else:
            enf["unchecked"] = f"{path}: mount {mnt_id} still there after the detach"
    except (OSError, subprocess.SubprocessError) as err:
        enf["unchecked"] = f"{path}: {err}"
        log.warning("mount residue not checked", extra={"path": path, "error": str(err)})
    finally:
        os.close(fd)
    log.info("mount residue", extra={"path": path, "left": left, "undone": undone})
