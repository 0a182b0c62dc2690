"""What a killed call left behind, and undoing it where that is safe (issue 13, must-have 5).

On the kill-after tier a denied setid call (chmod & co, a new file's mode, setxattr of
security.capability) runs before the SIGKILL lands: the bit or the capability IS set.
The kernel's record names the file (bpf/progs/enforce_args.bpf.c: a descriptor's file,
or the path as passed with the directory a relative one starts from). `Residue` is
called by the pipeline's format stage for each such record and adds to the event's
`enforcement` object:

  left    what the killed call changed and is still there ({path, what, mode}), as found
  undone  what the agent changed back ({path, what, mode}): setuid / setgid bits cleared,
          the security.capability xattr removed
  unchecked  why the file could not be looked at (no live process in that mount
          namespace, file gone, ...), when so

How it looks at the file: it waits until the killed process has exited (the record is
written before the call runs), then opens the path inside the process's root as a live
process of the same mount namespace sees it (/proc/<pid>/root, `openat2` with
RESOLVE_IN_ROOT, so a symlink in the container cannot point the agent at a host file),
checks the file is a regular file and changes only the bits the call asked for.
Mount-family syscalls under a syscall rule: agent/policy/mount_residue.py (the mount the
killed call made is detached inside the container's mount namespace).
Namespace records (kind ns) need nothing: a fork with a fatal signal pending is aborted
(no child, no namespace); unshare's new namespaces were held by the killed process only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent
from moray.agent.policy.inroot import open_in_root, target_of
from moray.agent.policy.mount_residue import MOUNT_NRS, mount_residue

log = logging.getLogger(__name__)

CAPS_XATTR = "security.capability"
NR_LSETXATTR = 189
def wanted(ev: EnforceEvent) -> list[str]:
    """The MR_SETID_* kinds the call asked for, by name."""
    return [n for i, n in enumerate(("setuid", "setgid", "caps")) if ev.family >> i & 1]


_BITS = {"setuid": stat.S_ISUID, "setgid": stat.S_ISGID}


class Residue:
    def __init__(self, proc: str = "/proc", wait: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.proc = proc
        self.wait = wait
        self.clock = clock
        self.sleep = sleep

    def __call__(self, ev: EnforceEvent, enf: dict[str, Any]) -> None:
        if ev.action != abi.EAction.KILLED:
            return
        if ev.kind == abi.EKind.NS:
            enf["left"], enf["undone"] = [], []
        elif ev.kind == abi.EKind.SETID:
            self.setid(ev, enf)
        elif ev.kind == abi.EKind.SYSCALL and ev.arg in MOUNT_NRS:
            mount_residue(self, ev, enf)  # a mount the killed call made: detached

    # --- setid ------------------------------------------------------------------------

    def setid(self, ev: EnforceEvent, enf: dict[str, Any]) -> None:
        left: list[dict[str, str]] = []
        undone: list[dict[str, str]] = []
        enf["left"], enf["undone"] = left, undone
        path = target_of(ev)
        self.wait_gone(ev.proc.pid)
        root = self.root_of(ev.proc.mntns, ev.proc.ppid)
        if root is None:
            enf["unchecked"] = "no live process in the mount namespace to look through"
            return
        try:
            fd = open_in_root(root, path, follow=ev.arg != NR_LSETXATTR)
        except OSError as err:
            enf["unchecked"] = f"{path}: {err.strerror}"
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                enf["unchecked"] = f"{path}: not a regular file"
                return
            via = f"/proc/self/fd/{fd}"
            mode = stat.S_IMODE(st.st_mode)
            kinds = wanted(ev)
            clear = 0
            for k in kinds:
                if k in _BITS and mode & _BITS[k]:
                    left.append({"path": path, "what": k, "mode": f"{mode:04o}"})
                    clear |= _BITS[k]
            if clear:
                os.chmod(via, mode & ~clear)
                new = stat.S_IMODE(os.stat(via).st_mode)
                for k in kinds:
                    if k in _BITS and clear & _BITS[k] and not new & _BITS[k]:
                        undone.append({"path": path, "what": f"{k} bit cleared",
                                       "mode": f"{new:04o}"})
            if "caps" in kinds and self._has_caps(via):
                left.append({"path": path, "what": "caps"})
                os.removexattr(via, CAPS_XATTR)
                if not self._has_caps(via):
                    undone.append({"path": path, "what": f"{CAPS_XATTR} removed"})
        except OSError as err:
            enf["unchecked"] = f"{path}: {err.strerror}"
            log.warning("setid residue not undone", extra={"path": path, "error": str(err)})
        finally:
            os.close(fd)
        if left:
            log.info("setid residue", extra={"path": path, "left": left, "undone": undone})

    @staticmethod
    def _has_caps(via: str) -> bool:
        try:
            os.getxattr(via, CAPS_XATTR)
        except OSError as err:
            if err.errno in (errno.ENODATA, errno.ENOTSUP):
                return False
            raise
        return True

    # --- processes --------------------------------------------------------------------

    def wait_gone(self, pid: int) -> bool:
        """Until *pid* has exited (gone or a zombie): its call has returned by then."""
        end = self.clock() + self.wait
        while True:
            try:
                with open(f"{self.proc}/{pid}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                return True
            if state in (b"Z", b"X"):
                return True
            if self.clock() >= end:
                return False
            self.sleep(0.002)

    def root_of(self, mntns: int, hint: int = 0) -> str | None:
        """/proc/<pid>/root of a live process in mount namespace *mntns* (*hint* first)."""
        want = f"mnt:[{mntns}]"
        pids = [str(hint)] if hint else []
        with contextlib.suppress(OSError):
            pids += [p for p in os.listdir(self.proc) if p.isdigit()]
        for p in pids:
            try:
                if os.readlink(f"{self.proc}/{p}/ns/mnt") != want:
                    continue
                root = f"{self.proc}/{p}/root"
                os.stat(root + "/")  # a zombie's root is gone
            except OSError:
                continue
            return root
        return None
