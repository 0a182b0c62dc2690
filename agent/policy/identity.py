"""Rules by identity: the (device, inode) of every file and directory a file rule or an
exec deny rule covers, in every root the rule's policy applies to (mr_pino,
bpf/maps/policy.h). An exec deny matched by identity refuses a hard link of the denied
binary run or mapped by another name.

A path rule alone is walked around by another name for the same file: a hard link, a
rename, a bind mount, a chroot. The kernel therefore also checks a file's identity, at
open (bpf/progs/enforce_file.bpf.c) and at any change of a covered file or directory
(bpf/progs/enforce_ident.bpf.c: link, rename, unlink, chmod ... in a covered directory or
on a covered file). This module keeps mr_pino current:

* :meth:`Identities.refresh` stats every covered path in every root in scope (the host's
  root; a container's root through /proc/<pid>/root of one of its processes), walking the
  directories of prefix rules (at most ``cap`` entries per rule and root: what is beyond
  is added by the kernel when it is opened by a covered name), and rewrites mr_pino to
  exactly that. Called after each publication, when new containers are classified and
  every ``period`` seconds (a replaced file gets its new identity; a deleted file's inode
  number, which the filesystem may reuse, leaves the map).
* it keeps what it saw of each file (mode, owner, links, the names in each covered
  directory), so a change the kill-after tier could not prevent is reported exactly and,
  where it is safe, undone (:meth:`Identities.residue`).

Identity is what stat() reports: st_dev in the kernel's encoding ((major << 20) | minor,
what inode->i_sb->s_dev holds) and st_ino.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from moray.agent.bpf import abi
from moray.agent.bpf.features import find_cgroup_v2
from moray.agent.policy.apply import MapLike
from moray.agent.policy.compile import FileVal
from moray.agent.policy.inroot import open_in_root
from moray.agent.policy.scope import ContainerLike, covers
from moray.api.policy.model import Access, FileRule, PathPattern, Policy

log = logging.getLogger(__name__)

_KEY = abi.PINO_KEY.compile()
_VAL = abi.PINO_VAL.compile()

Ident = tuple[int, int]  # (dev in the kernel's encoding, ino)


def kdev(st_dev: int) -> int:
    """stat()'s st_dev -> the kernel's dev_t (what the BPF programs read)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


@dataclass(frozen=True, slots=True)
class Seen:
    """One covered file or directory as the last refresh saw it."""

    path: str          # as the rule sees it (inside the root)
    root: str          # the root it was found in ("/" or /proc/<pid>/root)
    where: str         # "host" or the container id
    mode: int
    uid: int
    gid: int
    nlink: int
    names: frozenset[str] | None = None  # a directory's entries (None: a file)
    size: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """mr_pino_val: file rule masks and the exec deny mask of one identity."""

    file: FileVal = field(default_factory=FileVal)
    exec_deny: int = 0

    def __or__(self, o: Row) -> Row:
        return Row(self.file | o.file, self.exec_deny | o.exec_deny)


@dataclass
class Snapshot:
    taken_ns: int = 0  # boot clock when the walk started (records carry the same clock)
    rows: dict[Ident, Row] = field(default_factory=dict)
    seen: dict[Ident, Seen] = field(default_factory=dict)
    capped: list[str] = field(default_factory=list)


def _val(rule: FileRule, monitor: bool, bit: int) -> Row:
    read = rule.access in (Access.READ, Access.ANY)
    write = rule.access in (Access.WRITE, Access.ANY)
    if monitor:
        return Row(FileVal(mon_read=bit if read else 0, mon_write=bit if write else 0))
    return Row(FileVal(deny_read=bit if read else 0, deny_write=bit if write else 0))


class Identities:
    def __init__(self, maps: Mapping[str, MapLike], *, proc: str = "/proc",
                 cgroup_root: str | None = None, host_root: str = "/", cap: int = 4096,
                 period: float = 10.0) -> None:
        self.maps = maps
        self.host_root = host_root  # the host's / as the agent reaches it (a DaemonSet: a mount)
        self.proc = proc
        # where cgroup v2 is mounted (a hybrid host: /sys/fs/cgroup/unified)
        self.cgroup_root = cgroup_root or find_cgroup_v2(proc)[0] or "/sys/fs/cgroup"
        self.cap = cap
        self.period = period
        self.snap = Snapshot()  # replaced whole: read by the pipeline thread without a lock
        self._written: set[Ident] = set()
        self._next = 0.0
        self._lock = threading.Lock()  # refresh (policy thread) vs residue (pipeline)
        self._containers: dict[str, ContainerLike] = {}  # id -> container, to find a root
        self._history: list[Snapshot] = []

    # ------------------------------------------------------------------ roots

    def claim(self) -> None:
        """Tell the kernel which process is the agent (mr_pagent): its repairs of covered
        files are not changes to refuse."""
        m = self.maps.get("mr_pagent")
        if m is not None:
            m.update(struct.pack("<I", 0), struct.pack("<I", os.getpid()))

    def _host_root(self) -> str:
        return self.host_root

    def container_root(self, c: ContainerLike) -> str | None:
        """/proc/<pid>/root of a live process of *c* (None: none found)."""
        path = getattr(c, "cgroup_path", None)
        if not path:
            return None
        try:
            with open(os.path.join(self.cgroup_root, path.lstrip("/"), "cgroup.procs")) as f:
                for line in f:
                    pid = line.strip()
                    if pid and os.path.exists(f"{self.proc}/{pid}/root/"):
                        return f"{self.proc}/{pid}/root"
        except OSError:
            return None
        return None

    def roots(self, p: Policy, containers: Mapping[int, ContainerLike]) -> list[tuple[str, str]]:
        """(root, where) pairs the policy applies to."""
        out = []
        if covers(p, None):
            out.append((self._host_root(), "host"))
        for c in containers.values():
            if covers(p, c):
                r = self.container_root(c)
                if r is not None:
                    out.append((r, c.id))
                    self._containers[c.id] = c
        return out

    # ------------------------------------------------------------------ refresh

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def refresh(self, slotted: Iterable[tuple[int, Policy]],
                containers: Mapping[int, ContainerLike]) -> Snapshot:
        """Stat every covered path in every root in scope; rewrite mr_pino to match."""
        snap = Snapshot(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        for slot, p in slotted:
            rules = [(r, False) for r in p.files.deny] + [(r, True) for r in p.files.monitor]
            if not rules and not p.exec.deny:
                continue
            for root, where in self.roots(p, containers):
                for rule, monitor in rules:
                    self._cover(snap, root, where, rule.pattern, _val(rule, monitor, 1 << slot))
                for pat in p.exec.deny:  # a hard link of a denied binary is that binary
                    self._cover(snap, root, where, pat, Row(exec_deny=1 << slot))
        with self._lock:
            self._write(snap.rows)
            self.snap = snap
            # a change is judged against what was seen before it: keep a few walks, a
            # refresh may run between the change and its residue
            self._history = [*self._history[-3:], snap]
        self._next = time.monotonic() + self.period
        log.debug("file identity: %d files and directories covered", len(snap.rows),
                 extra={"roots": sorted({s.where for s in snap.seen.values()})})
        for c in snap.capped:
            log.warning("file identity: %s has more than %d entries; the rest are covered "
                        "by identity once opened by a covered name", c, self.cap)
        return snap

    def _cover(self, snap: Snapshot, root: str, where: str, pattern: PathPattern,
               val: Row) -> None:
        base = root.rstrip("/")
        top = pattern.path
        if pattern.exact:
            self._add(snap, base, where, top, val, walk=False)
            return
        # a prefix rule: "/etc/" covers the directory and what is under it; "/etc/ssh_"
        # covers the names in /etc that start with it
        d, _, start = top.rpartition("/")
        d = d or "/"
        todo: list[str] = []
        try:
            with os.scandir(base + d) as it:
                for e in it:
                    if e.name.startswith(start):
                        todo.append(os.path.join(d, e.name))
        except OSError:
            return
        if not start:  # the directory itself: a name added to or removed from it
            self._add(snap, base, where, d, val, walk=False)
        count = 0
        while todo:
            path = todo.pop()
            count += 1
            if count > self.cap:
                snap.capped.append(f"{pattern.text} in {where}")
                return
            if self._add(snap, base, where, path, val, walk=True):
                try:
                    with os.scandir(base + path) as it:
                        todo.extend(os.path.join(path, e.name) for e in it)
                except OSError:
                    pass

    def _add(self, snap: Snapshot, base: str, where: str, path: str, val: Row,
             walk: bool) -> bool:
        """Adds *path* (inside root *base*); True if it is a directory to walk into."""
        try:
            st = os.lstat(base + path)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return False  # opens resolve it: the rule sees the target's path
        ident = (kdev(st.st_dev), st.st_ino)
        snap.rows[ident] = snap.rows.get(ident, Row()) | val
        names = None
        if stat.S_ISDIR(st.st_mode):
            try:
                names = frozenset(os.listdir(base + path))
            except OSError:
                names = frozenset()
        if ident not in snap.seen:
            snap.seen[ident] = Seen(path, base or "/", where, st.st_mode, st.st_uid,
                                    st.st_gid, st.st_nlink, names, st.st_size)
        return walk and stat.S_ISDIR(st.st_mode)

    def _write(self, rows: Mapping[Ident, Row]) -> None:
        m = self.maps.get("mr_pino")
        if m is None:
            return
        for (dev, ino), r in rows.items():
            v = r.file
            m.update(_KEY.pack(dev, ino), _VAL.pack(v.deny_read, v.deny_write, v.mon_read,
                                                   v.mon_write, r.exec_deny))
        want = {_KEY.pack(d, i) for d, i in rows}
        # what the kernel added (opens by a covered name) is re-derived above; whatever is
        # not covered now (a deleted file whose inode number may be reused) goes
        for k in list(m.keys()):
            if k not in want:
                m.delete(k)
        self._written = set(rows)

    # ------------------------------------------------------------------ names

    def name_of(self, ident: tuple[int, int] | None) -> str | None:
        """The covered path of a file the kernel matched by identity."""
        if ident is None:
            return None
        s = self.snap.seen.get(ident)
        return s.path if s else None

    # ------------------------------------------------------------------ kill-after residue

    def _before(self, ident: Ident, ts: int) -> Seen | None:
        """What the newest walk taken before boot time *ts* saw of *ident*."""
        for snap in reversed(self._history):
            if snap.taken_ns < ts and ident in snap.seen:
                return snap.seen[ident]
        return self.snap.seen.get(ident)

    def residue(self, ident: tuple[int, int], pid: int, ts: int = 0,
                wait: float = 2.0) -> dict[str, list[str]]:
        """What a change killed after the fact left on a covered file or directory, and what
        was undone: the owner and mode are put back; a name added to a covered directory is
        removed when it is another name of a file that still has one (a hard link) and moved
        aside otherwise; names removed from it are reported (their file is still covered by
        identity wherever it went)."""
        left: list[str] = []
        undone: list[str] = []
        seen = self._before(ident, ts) if ts else self.snap.seen.get(ident)
        if seen is None:
            return {"left": ["unknown: the file is no longer covered"], "undone": []}
        _wait_gone(self.proc, pid, wait)  # the call finishes before the kill lands
        root = seen.root
        if not os.path.exists(root.rstrip("/") + "/"):  # that process is gone: another one
            c = self._containers.get(seen.where)
            found = self.container_root(c) if c is not None else None
            if found is None:
                return {"left": [f"{seen.path}: unknown, no process of {seen.where} is left "
                                 "to reach its files"], "undone": []}
            root = found
            seen = Seen(seen.path, root, seen.where, seen.mode, seen.uid, seen.gid,
                        seen.nlink, seen.names, seen.size)
        # every path is resolved inside the root (openat2 RESOLVE_IN_ROOT): a symlink the
        # container planted cannot point the agent's repairs at one of the host's files
        with self._lock:
            try:
                fd = open_in_root(root, seen.path, follow=False)
            except OSError:
                return {"left": [f"{seen.path} no longer exists (renamed or removed)"],
                        "undone": []}
            try:
                self._repair(fd, root, seen, ident, left, undone)
            finally:
                os.close(fd)
        return {"left": left, "undone": undone}

    def residue_created(self, path: str, where: str, pid: int, ts: int,
                        wait: float = 2.0) -> dict[str, list[str]]:
        """A write open killed at its exit on a file no walk had seen: if the name was not
        in its covered directory before and the file is empty (O_CREAT made it and the kill
        came before any write), remove it."""
        d, name = os.path.split(path)
        before = next((s for snap in reversed(self._history) if snap.taken_ns < ts
                       for s in snap.seen.values()
                       if s.where == where and s.path == d and s.names is not None), None)
        if before is None or name in before.names:  # type: ignore[operator]
            return {"left": [], "undone": []}
        _wait_gone(self.proc, pid, wait)
        root = self._root_of(before)
        if root is None:
            return {"left": [f"{path} created; no process of {where} is left to remove it"],
                    "undone": []}
        with self._lock:
            try:
                dfd = open_in_root(root, d, follow=False)
            except OSError:
                return {"left": [f"{path} created"], "undone": []}
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_size:
                    return {"left": [f"{path} created"], "undone": []}
                os.unlink(name, dir_fd=dfd)
                return {"left": [f"{path} created (empty)"],
                        "undone": [f"{path} removed (created by the killed call)"]}
            except OSError as err:
                return {"left": [f"{path} created"],
                        "undone": [] if err.errno != 2 else [f"{path} already gone"]}
            finally:
                os.close(dfd)

    def _root_of(self, seen: Seen) -> str | None:
        """A root through which *seen*'s files are reachable now."""
        if os.path.exists(seen.root.rstrip("/") + "/"):
            return seen.root
        c = self._containers.get(seen.where)
        return self.container_root(c) if c is not None else None

    def _repair(self, fd: int, root: str, seen: Seen, ident: Ident, left: list[str],
                undone: list[str]) -> None:
        st = os.fstat(fd)
        if (kdev(st.st_dev), st.st_ino) != ident:
            left.append(f"{seen.path} is now another file (replaced)")
            return
        via = f"/proc/self/fd/{fd}"  # that very inode, whatever its name now
        if stat.S_IMODE(st.st_mode) != stat.S_IMODE(seen.mode):
            left.append(f"{seen.path}: mode {stat.S_IMODE(seen.mode):o} -> "
                        f"{stat.S_IMODE(st.st_mode):o}")
            try:
                os.chmod(via, stat.S_IMODE(seen.mode))
                undone.append(f"{seen.path}: mode {stat.S_IMODE(seen.mode):o} restored")
            except OSError as err:
                left.append(f"cannot restore the mode: {err.strerror}")
        if (st.st_uid, st.st_gid) != (seen.uid, seen.gid):
            left.append(f"{seen.path}: owner {seen.uid}:{seen.gid} -> {st.st_uid}:{st.st_gid}")
            try:
                os.chown(via, seen.uid, seen.gid)
                undone.append(f"{seen.path}: owner {seen.uid}:{seen.gid} restored")
            except OSError as err:
                left.append(f"cannot restore the owner: {err.strerror}")
        if seen.names is None:
            if st.st_size != seen.size:
                left.append(f"{seen.path}: size {seen.size} -> {st.st_size} bytes "
                            "(content is not restored)")
            if st.st_nlink > seen.nlink:
                left.append(f"{seen.path}: a new name (hard link) was made, links "
                            f"{seen.nlink} -> {st.st_nlink}; the file stays covered by "
                            "identity under every name")
            return
        try:
            now = set(os.listdir(via))
        except OSError:
            now = set(seen.names)
        for name in sorted(now - seen.names):
            self._undo_added(fd, root, seen.path, name, left, undone)
        for name in sorted(seen.names - now):
            left.append(f"{os.path.join(seen.path, name)} removed or moved away")

    def _undo_added(self, dfd: int, root: str, path: str, name: str, left: list[str],
                    undone: list[str]) -> None:
        p = os.path.join(path, name)
        left.append(f"{p} added")
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                os.unlink(name, dir_fd=dfd)  # another name of a file that keeps its others
                undone.append(f"{p} removed (a hard link; the file keeps its other names)")
                return
            # out of the covered directory (a name there may be read by what the rule
            # protects, e.g. /etc/cron.d/*), kept for inspection at the top of the same
            # filesystem (a rename: no copy, nothing lost)
            top = _fs_top(root, path)
            tfd = open_in_root(root, top)
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(".moray-quarantine", 0o700, dir_fd=tfd)
                qfd = open_in_root(root, os.path.join(top, ".moray-quarantine"), follow=False)
            finally:
                os.close(tfd)
            try:
                aside = f"{int(time.time())}-{name}"
                os.rename(name, aside, src_dir_fd=dfd, dst_dir_fd=qfd)
            finally:
                os.close(qfd)
            undone.append(f"{p} moved to {os.path.join(top, '.moray-quarantine', aside)}")
        except OSError as err:
            left.append(f"cannot undo {p}: {err.strerror}")


def _fs_top(root: str, path: str) -> str:
    """The highest directory above *path* (inside *root*) on the same filesystem."""
    def dev(p: str) -> int:
        fd = open_in_root(root, p or "/", follow=False)
        try:
            return os.fstat(fd).st_dev
        finally:
            os.close(fd)

    top = path
    mine = dev(path)
    while top not in ("", "/"):
        up = os.path.dirname(top)
        try:
            if dev(up) != mine:
                break
        except OSError:
            break
        top = up
    return top or "/"


def _wait_gone(proc: str, pid: int, wait: float) -> None:
    """Until *pid* is gone or a zombie (its syscall has finished), at most *wait* s."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            with open(f"{proc}/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.005)
