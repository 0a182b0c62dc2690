"""The per-syscall deciders: what one notified call would do, and the verdict on it.

Read-only over the supervisor's rules (``policies``, ``plan``, ``identity``; swapped as a
whole by ``Supervisor.update``, under the lock held while a call is judged): ``judge``
reads the call's arguments and the caller's facts, resolves paths in the caller's view
and asks moray.micro.rules; an exact open makes the fd handed over (``Answer``). A call
that cannot be judged raises ``Undecidable`` (refused when an enforcing rule could apply),
one whose caller went away ``Gone``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import posixpath
import re
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

from moray.api.policy.model import CLONE_FLAGS, Mode, Policy
from moray.api.policy.syscalls import X86_64
from moray.micro import events, notify, rules
from moray.micro import filter as bpf
from moray.micro.inventory import Inventory
from moray.micro.resolve import ForbiddenEntry, base_of, open_path, resolve

log = logging.getLogger(__name__)

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
O_NOFOLLOW = 0o400000
AT_FDCWD = -100
# flags a reopen through /proc/self/fd/N keeps: not creation, not O_NOFOLLOW (the magic
# link itself is a symbolic link), O_CLOEXEC given to the caller's copy by ADDFD
_REOPEN = ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC) & 0xFFFFFFFF
_ACC = {1: "read", 2: "write", 3: "read-write"}
NAMES = {v: k for k, v in X86_64.items()}
_NR = X86_64
_OPEN_FLAGS_ARG = {_NR["open"]: (None, 0, 1), _NR["openat"]: ("dirfd", 1, 2),
                   _NR["openat2"]: ("dirfd", 1, -1), _NR["creat"]: (None, 0, -2)}
NOTES = {
    "namespaces": "the call failed with EPERM: no namespace was created or entered",
    "setid": "the call failed with EPERM: no setuid/setgid bit or file capability was set",
    "exec": "the exec failed with EPERM: the new program never ran",
    "drift": "the exec failed with EPERM: the file was written or changed after the "
             "enforcer started",
    "file": "the open failed with EPERM: nothing was opened, created or truncated",
    "network": "the call failed with EPERM: nothing was sent",
    "syscall": "the call failed with EPERM",
    "supervisor": "the call targeted the MicroEnforcer's supervisor and failed with EPERM",
}


class Undecidable(Exception):
    """What the call would do cannot be known from here (a reason for the event)."""


class Deciders:
    """Mixed into ``Supervisor``: what it needs from it is declared here."""

    policies: tuple[Policy, ...]
    plan: rules.Plan
    enforcing: bool
    files_used: bool
    inventory: Inventory
    identity: dict[tuple[int, int], str]
    node: str
    proc: str
    pid: int
    listener: int
    exact: bool
    creds: tuple[str, ...]
    _caller: tuple[int, int]
    _proc_dev: int
    _root: tuple[int, int]
    _mntns: int

    def _undecidable(self, name: str, why: str) -> tuple[rules.Verdict, dict[str, Any]]:
        """Fail closed where an enforcing policy has a rule of the call's kind."""
        kind = {"execve": "exec", "execveat": "exec", "mmap": "drift", "clone": "namespaces",
                "unshare": "namespaces", "setns": "namespaces"}.get(
            name, "network" if name in rules.NET_CALLS else
            "setid" if name in rules.XATTR_CALLS or name in rules.MODE_ARGS else "file")

        def used(p: Policy) -> bool:
            return {"exec": p.exec.used, "drift": p.exec.drift, "file": p.files.used,
                    "network": p.network.used, "namespaces": p.namespaces.used,
                    "setid": p.setid.used or p.files.used}[kind]

        m = tuple(rules.Match(p.name, p.mode.value, f"undecidable: {why}")
                  for p in self.policies if used(p))
        return rules.Verdict(kind, m), {"syscall": name}

    def judge(self, n: notify.Notification, name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        """The verdict on one call, and what the event says about its object."""
        if name in ("kill", "tkill", "tgkill", "pidfd_open", "ptrace", "process_vm_readv",
                    "process_vm_writev") and self._guarded(n, name):
            return rules.Verdict("supervisor", (rules.Match(
                "moray-micro", Mode.ENFORCE.value, f"supervisor: {name}"),)), {
                "syscall": name, "target": self.pid}
        if name == "pidfd_send_signal":
            target = self._pidfd_target(n.pid, n.int_arg(0))
            if target == self.pid:
                return rules.Verdict("supervisor", (rules.Match(
                    "moray-micro", Mode.ENFORCE.value, "supervisor: pidfd_send_signal"),)), {
                    "syscall": name, "target": self.pid}
            return self._syscall_rule(name)
        if name in ("execve", "execveat"):
            return self._exec(n, name)
        if name in ("clone", "unshare", "setns"):
            v, detail = self._namespaces(n, name)
            return (v, detail) if v.matches else self._syscall_rule(name)
        if name in rules.MODE_ARGS or name == "openat2":
            v, detail = self._setid_mode(n, name)
            if v.matches:
                return v, detail
            if name not in ("open", "openat", "openat2", "creat") or not self.files_used:
                return self._syscall_rule(name)
        if name in rules.XATTR_CALLS:
            v, detail = self._setid_xattr(n, name)
            return (v, detail) if v.matches else self._syscall_rule(name)
        if name in ("open", "openat", "openat2", "creat"):
            return self._open(n, name)
        if name in rules.NET_CALLS:
            return self._net(n, name)
        if name == "mmap":
            return self._mmap(n)
        return self._syscall_rule(name)

    def _namespaces(self, n: notify.Notification,
                    name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        """clone/unshare flags (a register: exact); setns: the namespace types of its
        nstype, or of the namespace file its fd refers to (nstype 0)."""
        if name == "setns":
            flags = n.args[1] & 0xFFFFFFFF
            if not flags:
                try:
                    link = os.readlink(f"{self.proc}/{n.pid}/fd/{n.int_arg(0)}")
                except OSError:
                    return rules.ALLOWED, {}   # a bad fd: setns fails on its own (EBADF)
                kind = {"mnt": "mount"}.get(link.split(":", 1)[0], link.split(":", 1)[0])
                flags = CLONE_FLAGS.get(kind, 0)
        else:
            flags = n.args[0] & 0xFFFFFFFF
        names = rules.ns_names(flags & rules.ns_mask(self.policies))
        return rules.decide_namespaces(self.policies, names), {
            "syscall": name, "nr": n.nr, "namespaces": names, "flags": f"{flags:#x}"}

    def _setid_mode(self, n: notify.Notification,
                    name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        """The mode a chmod or a creation asks for (a register; openat2: its open_how,
        read from memory)."""
        if name == "openat2":
            with notify.Memory(n.pid, self.proc) as mem:
                flags, mode = struct.unpack("=QQ", mem.read(n.args[2], 16))
            if not flags & os.O_CREAT:
                return rules.ALLOWED, {}
        else:
            mode_i, flags_i = rules.MODE_ARGS[name]
            if flags_i is not None and not n.args[flags_i] & os.O_CREAT:
                return rules.ALLOWED, {}
            mode = n.args[mode_i]
        kinds = rules.setid_kinds(mode)
        return rules.decide_setid(self.policies, kinds), {
            "syscall": name, "nr": n.nr, "setid": kinds, "mode": f"{mode & 0o7777:04o}"}

    def _setid_xattr(self, n: notify.Notification,
                     name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        with notify.Memory(n.pid, self.proc) as mem:
            attr = os.fsdecode(mem.string(n.args[rules.XATTR_CALLS[name]], 256))
        if attr != "security.capability":
            return rules.ALLOWED, {}
        return rules.decide_setid(self.policies, ["caps"]), {
            "syscall": name, "nr": n.nr, "setid": ["caps"], "xattr": attr}

    def _syscall_rule(self, name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        v = rules.decide_syscall(self.policies, name)
        # notified only for monitor-mode policies: never refused here
        v = rules.Verdict(v.kind, tuple(m for m in v.matches
                                        if m.mode == Mode.MONITOR.value))
        return v, {"syscall": name, "nr": X86_64.get(name)}

    def _guarded(self, n: notify.Notification, name: str) -> bool:
        if name == "kill":
            target, sig = n.int_arg(0), n.int_arg(1)
            return target in (self.pid, -1) and sig != 0
        if name == "tkill":
            return n.int_arg(0) == self.pid and n.int_arg(1) != 0
        if name == "tgkill":
            return n.int_arg(0) == self.pid and n.int_arg(2) != 0
        if name == "ptrace":
            return n.int_arg(1) == self.pid
        return n.int_arg(0) == self.pid  # pidfd_open, process_vm_readv/writev

    def _pidfd_target(self, tid: int, fd: int) -> int | None:
        try:
            for line in open(f"{self.proc}/{tid}/fdinfo/{fd}"):  # noqa: SIM115
                if line.startswith("Pid:"):
                    return int(line.split()[1])
            link = os.readlink(f"{self.proc}/{tid}/fd/{fd}")
        except OSError:
            return None
        if link.startswith("/proc/") and link[6:].isdigit():
            return int(link[6:])
        return None

    def _same_view(self, tid: int) -> None:
        """Paths are resolved in the supervisor's root and mount namespace: refuse to
        judge a caller that has another one (a user+mount namespace of its own)."""
        try:
            r = os.stat(f"{self.proc}/{tid}/root")
            m = os.stat(f"{self.proc}/{tid}/ns/mnt")
        except OSError as err:
            raise Undecidable(f"cannot read /proc/{tid}: {err.strerror}") from err
        if (r.st_dev, r.st_ino) != self._root or m.st_ino != self._mntns:
            raise Undecidable("the caller has another root or mount namespace")

    def _facts(self, tid: int) -> Facts:
        """Thread group, credentials and umask of a caller (/proc/<tid>/status)."""
        f: dict[str, list[str]] = {}
        try:
            for line in open(f"{self.proc}/{tid}/status"):  # noqa: SIM115
                key, _, val = line.partition(":")
                if key in ("Tgid", "Uid", "Gid", "Groups", "Umask", "CapEff"):
                    f[key] = val.split()
        except OSError as err:
            raise Undecidable(f"cannot read /proc/{tid}/status: {err.strerror}") from err
        return Facts(int(f["Tgid"][0]), _creds(f), int(f.get("Umask", ["022"])[0], 8))

    def _tgid(self, tid: int) -> int:
        try:
            for line in open(f"{self.proc}/{tid}/status"):  # noqa: SIM115
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return tid

    def _drifted(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False   # nothing there: the exec fails on its own (ENOENT)
        return self.inventory.drifted(path, st)

    def _exec(self, n: notify.Notification, name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        tid = n.pid
        self._same_view(tid)
        tgid = self._tgid(tid)
        if name == "execve":
            dirfd, ptr, flags = -100, n.args[0], 0
        else:
            dirfd, ptr, flags = n.int_arg(0), n.args[1], n.int_arg(4)
        with notify.Memory(tid, self.proc) as mem:
            raw = mem.string(ptr)
        path = os.fsdecode(raw)
        if not path and flags & AT_EMPTY_PATH:
            named = base_of(tid, dirfd, self.proc)
            src = f"{self.proc}/{tid}/fd/{dirfd}"
        else:
            base = base_of(tid, -100 if path.startswith("/") else dirfd, self.proc)
            named = resolve(path, base, tgid, tid, follow_last=False, proc=self.proc).path
            src = ""
        # the file itself, as the kernel would reach it now (a deleted file, a memfd, a
        # name through /proc/<pid>/fd: its inode), for its path and its ctime
        try:
            fd = self._exec_file(tid, tgid, path, dirfd, src, flags)
        except ForbiddenEntry as err:
            return rules.Verdict("supervisor", (rules.Match(
                "moray-micro", Mode.ENFORCE.value, "supervisor: /proc entry"),)), {
                "binary": err.path, "filename": path, "syscall": name}
        except OSError:
            # nothing to run there (ENOENT, EACCES...): the exec fails on its own
            v = rules.decide_exec(self.policies, named, named, False)
            return v, {"binary": named, "filename": path, "syscall": name}
        try:
            st = os.fstat(fd)
            binary = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        finally:
            os.close(fd)
        drifted = self.inventory.drifted(binary, st) or binary.startswith("/memfd:") \
            or st.st_nlink == 0
        v = rules.decide_exec(self.policies, binary, named, drifted)
        return v, {"binary": binary, "filename": path, "syscall": name}

    def _exec_file(self, tid: int, tgid: int, path: str, dirfd: int, src: str,
                   flags: int) -> int:
        if src:
            return os.open(src, os.O_PATH | os.O_CLOEXEC)
        want = _caller_path(path, tgid, tid)
        base = None
        if not want.startswith("/"):
            where = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
            base = os.open(f"{self.proc}/{tid}/{where}", os.O_PATH | os.O_CLOEXEC)
        try:
            return open_path(want, base, os.O_NOFOLLOW if flags & AT_SYMLINK_NOFOLLOW else 0,
                             tgid, tid, self._supervisor_pid, self._proc_dev)
        finally:
            if base is not None:
                os.close(base)

    def _mmap(self, n: notify.Notification) -> tuple[rules.Verdict, dict[str, Any]]:
        tid, fd = n.pid, n.int_arg(4)
        try:
            st = os.stat(f"{self.proc}/{tid}/fd/{fd}")
            link = os.readlink(f"{self.proc}/{tid}/fd/{fd}")
        except OSError:
            return rules.ALLOWED, {}  # a bad fd: mmap fails on its own (EBADF)
        drifted = self.inventory.drifted(link, st)
        v = rules.decide_mapped(self.policies, link, drifted)
        return v, {"binary": link, "via": "mmap", "syscall": "mmap"}

    def _open(self, n: notify.Notification, name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        tid = n.pid
        self._same_view(tid)
        facts = self._facts(tid)   # one read of /proc/<tid>/status per call
        tgid = facts.tgid
        how, pidx, fidx = _OPEN_FLAGS_ARG[n.nr]
        dirfd = n.int_arg(0) if how == "dirfd" else AT_FDCWD
        resolve_flags = 0
        with notify.Memory(tid, self.proc) as mem:
            path = os.fsdecode(mem.string(n.args[pidx]))
            if fidx == -1:   # openat2: struct open_how {u64 flags, mode, resolve}
                flags, mode, resolve_flags = struct.unpack("=QQQ", mem.read(n.args[2], 24))
            elif fidx == -2:  # creat
                flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, n.args[1] & 0o7777
            else:
                flags = n.args[fidx] & 0xFFFFFFFF
                mode = n.args[fidx + 1] & 0o7777
        if self.exact and not resolve_flags and facts.creds == self.creds:
            return self._open_exact(n, name, facts, path, flags, mode, dirfd)
        base = base_of(tid, -100 if path.startswith("/") else dirfd, self.proc)
        res = resolve(path, base, tgid, tid, follow_last=not flags & O_NOFOLLOW,
                      proc=self.proc)
        names = [res.path]
        try:
            st = os.stat(res.path) if res.exists and not res.special else None
        except OSError:
            st = None
        if st is not None:
            covered = self.identity.get((st.st_dev, st.st_ino))
            if covered:
                names.append(covered)
        acc = rules.access_of(flags)
        v = rules.decide_open(self.policies, names, acc)
        return v, {"path": res.path, "path_as_written": path, "syscall": name,
                   "access": {1: "read", 2: "write", 3: "read-write"}.get(acc, "path"),
                   **({"covered_path": names[1]} if len(names) > 1 else {})}

    def _open_exact(self, n: notify.Notification, name: str, facts: Facts, path: str,
                    flags: int, mode: int, dirfd: int) -> tuple[rules.Verdict, dict[str, Any]]:
        """Open the file here, judge the file really opened (its path from our fd, its
        identity), and give the caller that very fd (``add_fd_and_return``): the kernel
        never reads the caller's path again, so no thread and no symbolic link swapped
        meanwhile changes what is opened. Creation goes through the resolved parent
        directory with O_NOFOLLOW; O_TRUNC is applied after the check."""
        tid, acc = n.pid, rules.access_of(flags)
        self._caller = (facts.tgid, tid)
        ans = Answer(cloexec=bool(flags & os.O_CLOEXEC))
        want = _caller_path(path, facts.tgid, tid)
        detail: dict[str, Any] = {"path_as_written": path, "syscall": name,
                                  "access": _ACC.get(acc, "path"), "_answer": ans}
        try:
            base = None
            if not want.startswith("/"):
                src = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
                try:
                    base = ans.keep(os.open(f"{self.proc}/{tid}/{src}",
                                            os.O_PATH | os.O_CLOEXEC))
                except OSError:
                    ans.err = errno.EBADF
                    return rules.ALLOWED, detail
            if not notify.id_valid(self.listener, n.id):
                raise Gone
            old_umask = os.umask(facts.umask)
            try:
                for _ in range(3):
                    done = self._open_step(want, base, flags, mode, acc, ans, detail)
                    if done is not None:
                        return done, detail
            finally:
                os.umask(old_umask)
            raise Undecidable("the path kept changing while it was opened")
        except BaseException:
            ans.close()
            raise

    def _open_step(self, want: str, base: int | None, flags: int, mode: int, acc: int,
                   ans: Answer, detail: dict[str, Any]) -> rules.Verdict | None:
        """One try; None: retry (the name became a symbolic link meanwhile)."""
        follow = flags & (os.O_NOFOLLOW | os.O_DIRECTORY)
        try:
            pfd = ans.keep(open_path(want, base, follow, self._caller[0], self._caller[1],
                                     self._supervisor_pid, self._proc_dev))
        except ForbiddenEntry as err:
            detail["path"] = err.path
            return rules.Verdict("supervisor", (rules.Match(
                "moray-micro", Mode.ENFORCE.value, "supervisor: /proc entry"),))
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                ans.err = errno.ENOENT
                return rules.ALLOWED
            return self._create(want, base, flags, mode, acc, ans, detail)
        except OSError as err:
            ans.err = err.errno or errno.EIO
            return rules.ALLOWED
        st = os.fstat(pfd)
        real = os.readlink(f"/proc/self/fd/{pfd}")
        if self._supervisor_entry(real):
            # opened here it would be the supervisor opening its own entry (its fds, its
            # maps): what the caller could never open itself (the supervisor is not
            # dumpable)
            detail["path"] = real
            return rules.Verdict("supervisor", (rules.Match(
                "moray-micro", Mode.ENFORCE.value, "supervisor: /proc entry"),))
        v = self._judge_file(real, st, acc, detail)
        if v.deny:
            return v
        if flags & os.O_CREAT and flags & os.O_EXCL:
            ans.err = errno.EEXIST
        elif flags & os.O_PATH:
            ans.fd = pfd
        elif stat.S_ISFIFO(st.st_mode):
            ans.fifo = (pfd, flags & _REOPEN)
        else:
            try:
                ans.fd = ans.keep(os.open(f"/proc/self/fd/{pfd}", (flags & _REOPEN)
                                          | os.O_CLOEXEC, mode))
            except OSError as err:
                ans.err = err.errno or errno.EIO
        return v

    def _create(self, want: str, base: int | None, flags: int, mode: int, acc: int,
                ans: Answer, detail: dict[str, Any]) -> rules.Verdict | None:
        parent, _, leaf = want.rpartition("/")
        if not leaf:
            ans.err = errno.EISDIR
            return rules.ALLOWED
        parent = parent or ("/" if want.startswith("/") else ".")
        try:
            pdir = ans.keep(os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                    dir_fd=base))
        except OSError as err:
            ans.err = err.errno or errno.EIO
            return rules.ALLOWED
        cand = posixpath.join(os.readlink(f"/proc/self/fd/{pdir}"), leaf)
        detail["path"] = cand
        v = rules.decide_open(self.policies, [cand], acc)
        if v.deny:
            return v
        try:
            fd = ans.keep(os.open(leaf, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  mode, dir_fd=pdir))
        except OSError as err:
            if err.errno == errno.ELOOP and not flags & os.O_NOFOLLOW:
                return None   # made a symbolic link meanwhile: resolve it from the top
            ans.err = err.errno or errno.EIO
            return rules.ALLOWED
        st = os.fstat(fd)
        v = self._judge_file(cand, st, acc, detail)   # created meanwhile as a hard link?
        if v.deny:
            return v
        if flags & os.O_TRUNC and acc & 2:
            os.ftruncate(fd, 0)
        ans.fd = fd
        return v

    def _supervisor_entry(self, path: str) -> bool:
        m = _PROC_ENTRY.match(path)
        return m is not None and self._supervisor_pid(int(m.group(1)))

    def _supervisor_pid(self, n: int) -> bool:
        """*n* is the supervisor or one of its threads."""
        if n == self.pid:
            return True
        try:
            return n in {int(t) for t in os.listdir(f"{self.proc}/{self.pid}/task")}
        except OSError:
            return False

    def _judge_file(self, real: str, st: os.stat_result, acc: int,
                    detail: dict[str, Any]) -> rules.Verdict:
        names = [real.removesuffix(" (deleted)")]
        covered = self.identity.get((st.st_dev, st.st_ino))
        if covered:
            names.append(covered)
            detail["covered_path"] = covered
        detail["path"] = names[0]
        return rules.decide_open(self.policies, names, acc)

    def _net(self, n: notify.Notification, name: str) -> tuple[rules.Verdict, dict[str, Any]]:
        tid = n.pid
        fd = n.int_arg(0)
        with notify.Memory(tid, self.proc) as mem:
            if name == "connect":
                addrs = [mem.read(n.args[1], min(n.args[2] & 0xFFFFFFFF, 128))]
            elif name == "sendto":
                addrs = [mem.read(n.args[4], min(n.args[5] & 0xFFFFFFFF, 128))]
            elif name == "sendmsg":
                addrs = [_msg_name(mem, n.args[1])]
            else:  # sendmmsg: struct mmsghdr {msghdr (56), unsigned msg_len} = 64 bytes
                count = min(n.args[2] & 0xFFFFFFFF, 1024)
                addrs = [_msg_name(mem, n.args[1] + 64 * i) for i in range(count)]
        proto = self._sock_proto(n.pid, fd)
        worst: tuple[rules.Verdict, dict[str, Any]] = (rules.ALLOWED, {})
        for raw in addrs:
            dest = _sockaddr(raw)
            if dest is None:
                continue
            addr, port = dest
            v = rules.decide_connect(self.policies, addr, port, proto)
            if v.matches and (not worst[0].matches or v.deny):
                worst = (v, {"daddr": str(rules.effective_address(addr)), "dport": port,
                             "protocol": {6: "tcp", 17: "udp"}.get(proto), "syscall": name})
            if v.deny:
                break
        return worst

    def _sock_proto(self, tid: int, fd: int) -> int:
        """SO_PROTOCOL of the caller's socket (a copy taken with pidfd_getfd); 0 when
        unknown (then a rule of either protocol applies)."""
        try:
            pidfd = os.pidfd_open(self._tgid(tid))
        except OSError:
            return 0
        try:
            got = bpf.pidfd_getfd(pidfd, fd)
        except OSError:
            return 0
        finally:
            os.close(pidfd)
        try:
            s = socket.socket(fileno=got)
            try:
                return int(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
            finally:
                s.detach()
        except OSError:
            return 0
        finally:
            os.close(got)

    def _event(self, n: notify.Notification, name: str, v: rules.Verdict,
               detail: dict[str, Any]) -> dict[str, Any]:
        tgid = self._tgid(n.pid)
        ev = events.envelope("enforce", self.node, events.process(tgid, n.pid, self.proc),
                             events.parent(tgid, self.proc))
        first = next((m for m in v.matches if m.mode == Mode.ENFORCE.value), v.matches[0])
        enf: dict[str, Any] = {
            "action": v.action, "kind": v.kind,
            "tier": "seccomp-notify", "policy": first.policy, "rule": first.rule,
            "policies": [{"name": m.policy, "mode": m.mode,
                          "enforced": m.mode == Mode.ENFORCE.value, "rule": m.rule}
                         for m in v.matches],
            **detail}
        if v.deny and v.kind in NOTES:
            enf["note"] = NOTES[v.kind]
        ev["enforcement"] = enf
        return ev


def _msg_name(mem: notify.Memory, addr: int) -> bytes:
    raw = mem.read(addr, 16)
    ptr, length = struct.unpack("=QI", raw[:12])
    if not ptr or not length:
        return b""
    return mem.read(ptr, min(length, 128))


def _sockaddr(raw: bytes) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                                   int] | None:
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return ipaddress.IPv4Address(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 24:
        return ipaddress.IPv6Address(raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
    return None


class Gone(Exception):
    """The caller went away (its notification is no longer valid)."""


@dataclass(frozen=True, slots=True)
class Facts:
    tgid: int
    creds: tuple[str, ...]
    umask: int


@dataclass
class Answer:
    """How an exact open is answered: an fd of ours to hand over, or an errno. Owns the
    fds opened for it (closed once the caller has its copy)."""

    fd: int = -1
    err: int = 0
    cloexec: bool = False
    fifo: tuple[int, int] | None = None
    fds: list[int] = field(default_factory=list)

    def keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        while self.fds:
            with contextlib.suppress(OSError):
                os.close(self.fds.pop())


def _creds(f: dict[str, list[str]]) -> tuple[str, ...]:
    """What decides an open's permission: effective and filesystem uid / gid, the groups,
    the effective capabilities."""
    uid, gid = f.get("Uid", ["", "", "", ""]), f.get("Gid", ["", "", "", ""])
    return (uid[1], uid[3], gid[1], gid[3], " ".join(sorted(f.get("Groups", []))),
            "".join(f.get("CapEff", [])))


def kernel_at_least(major: int, minor: int) -> bool:
    try:
        nums = os.uname().release.split("-")[0].split(".")
        return (int(nums[0]), int(nums[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


_SELF = re.compile(r"^/(proc/self|proc/thread-self|dev/fd|dev/stdin|dev/stdout|dev/stderr)"
                   r"(?=/|$)")
_PROC_ENTRY = re.compile(r"^/proc/(\d+)(?:/|$)")
_STDIO = {"dev/stdin": "fd/0", "dev/stdout": "fd/1", "dev/stderr": "fd/2", "dev/fd": "fd"}


def _caller_path(path: str, tgid: int, tid: int) -> str:
    """*path* with the names that mean "the calling process" spelled with its pid, so the
    supervisor opening it reaches the caller's entry and not its own."""
    m = _SELF.match(path)
    if m is None:
        return path
    what = m.group(1)
    if what == "proc/self":
        head = f"/proc/{tgid}"
    elif what == "proc/thread-self":
        head = f"/proc/{tgid}/task/{tid}"
    else:
        head = f"/proc/{tgid}/{_STDIO[what]}"
    return head + path[m.end():]
