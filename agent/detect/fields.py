"""The fields a detection rule can name, and how each is read from an enriched event.

An event reaches the engine as the agent's JSON object (agent/output/schema.py, documented
in docs/events.md) wrapped in a :class:`~moray.agent.detect.ctx.Ctx`, which also reaches
the process tree for ancestry and the engine's state (container entrypoints, connection
windows). Every field has a kind (str, int, bool, list) the rule compiler type-checks
operators against, and the event types it exists for, from which the compiler indexes
rules by event type. A field that is absent from an event reads as None: every comparison
on it is false except `!=`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moray.agent.detect.ctx import Ctx

STR, INT, BOOL, LIST = "str", "int", "bool", "list"

EVENT_TYPES = frozenset({"exec", "fork", "exit", "open", "connect", "accept", "listen", "send",
                         "syscall", "enforce"})
NET_TYPES = frozenset({"connect", "accept", "listen", "send"})


Getter = Callable[[Ctx], Any]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: str
    get: Getter
    types: frozenset[str] | None  # event types it exists for; None: every type
    doc: str


# Fields that are a function of Ctx.file_key alone: a condition reading only these has the
# same value for every open of the same path with the same flags and result, so its value
# is memoized (agent/detect/plan.py FilePlan). Keep in step with file_key.
FILE_PURE = frozenset({"evt.type", "file.path", "file.name", "file.directory", "file.access",
                       "file.flags", "file.write", "file.failed", "file.error", "file.root"})


def _sub(section: str, key: str) -> Getter:
    def get(c: Ctx) -> Any:
        s = c.e.get(section)
        return s.get(key) if s else None
    return get


def _sub2(section: str, sub: str, key: str) -> Getter:
    def get(c: Ctx) -> Any:
        s = c.e.get(section)
        if not s:
            return None
        t = s.get(sub)
        return t.get(key) if t else None
    return get


def _proc(key: str) -> Getter:
    def get(c: Ctx) -> Any:
        return c.e["process"].get(key)
    return get


def _basename(get: Getter) -> Getter:
    def g(c: Ctx) -> Any:
        v = get(c)
        return os.path.basename(v) if v else v
    return g


def _cmdline(c: Ctx) -> str:
    return " ".join(c.e["process"].get("args") or ())


def _parent_attr(attr: str) -> Getter:
    def get(c: Ctx) -> Any:
        p = c.parent
        return getattr(p, attr) if p is not None else None
    return get


def _parent_cmdline(c: Ctx) -> str | None:
    p = c.parent
    return " ".join(p.args) if p is not None else None


def _args_line(c: Ctx) -> str:
    return " ".join((c.e["process"].get("args") or [])[1:])


def _argv0(c: Ctx) -> str | None:
    args = c.e["process"].get("args")
    return args[0] if args else None


def _parent_argv0(c: Ctx) -> str | None:
    p = c.parent
    return p.args[0] if p is not None and p.args else None


def _name_cmdline(c: Ctx) -> str:
    p = c.e["process"]
    return " ".join([p.get("comm") or "", *(p.get("args") or [])[1:]])


def _parent_name_cmdline(c: Ctx) -> str | None:
    p = c.parent
    return " ".join([p.comm, *p.args[1:]]) if p is not None else None


def _dirname(c: Ctx) -> str | None:
    f = c.e.get("file")
    path = f.get("path") if f else None
    return os.path.dirname(path) or "/" if path else None


def _anames(c: Ctx) -> list[str]:
    return [p.comm for p in c.ancestors()]


def _abinaries(c: Ctx) -> list[str]:
    return [p.binary for p in c.ancestors()]


def _file_write(c: Ctx) -> bool | None:
    f = c.e.get("file")
    if not f:
        return None
    return f["access"] in ("write", "read-write") or "O_TRUNC" in f["flags"] or (
        "O_CREAT" in f["flags"])


def _file_failed(c: Ctx) -> bool | None:
    f = c.e.get("file")
    return f["result"] < 0 if f else None


def _sys_failed(c: Ctx) -> bool | None:
    s = c.e.get("syscall")
    return s["result"] < 0 if s else None


def _setid(c: Ctx) -> bool | None:
    s = c.e.get("syscall")
    if not s or "mode" not in s:
        return None
    return bool(int(s["mode"], 8) & 0o6000)


def _evt_path(c: Ctx) -> str | None:
    f = c.e.get("file") or c.e.get("syscall")
    return f.get("path") if f else None


def _is_entrypoint(c: Ctx) -> bool | None:
    if not c.e.get("container"):
        return None
    return c.state.is_entrypoint(c.proc, c.e["container"])


def _parent_is_entrypoint(c: Ctx) -> bool | None:
    if not c.e.get("container"):
        return None
    return c.state.is_entrypoint(c.parent, c.e["container"])


def _distinct(kind: str) -> Getter:
    def get(c: Ctx) -> int | None:
        return c.state.distinct(c.e["process"]["exec_id"], kind)
    return get


def _build() -> dict[str, Field]:  # noqa: PLR0915 - the field table, one line per field
    f: list[Field] = []

    def add(name: str, kind: str, get: Getter, types: frozenset[str] | None, doc: str) -> None:
        f.append(Field(name, kind, get, types, doc))

    add("evt.type", STR, lambda c: c.e["type"], None,
        "event type: exec, open, connect, syscall, ...")
    add("proc.name", STR, _proc("comm"), None, "the task name (comm, 15 chars)")
    add("proc.binary", STR, _proc("binary"), None, "absolute path of the running binary")
    add("proc.binary_name", STR, _basename(_proc("binary")), None, "basename of proc.binary")
    add("proc.filename", STR, _proc("filename"), frozenset({"exec"}),
        "exec: the path as passed to execve")
    add("proc.args", LIST, _proc("args"), None, "argv, one item per argument")
    add("proc.cmdline", STR, _cmdline, None, "argv joined with spaces")
    add("proc.args_line", STR, _args_line, None,
        "argv after argv[0], joined with spaces (Falco's proc.args)")
    add("proc.first_arg", STR, _argv0, None, "argv[0] as the caller passed it (Falco's proc.exe)")
    add("proc.name_cmdline", STR, _name_cmdline, None,
        "proc.name then argv after argv[0] (Falco's proc.cmdline)")
    add("proc.cwd", STR, _proc("cwd"), None, "working directory at exec")
    add("proc.pid", INT, _proc("pid"), None, "pid (host namespace)")
    add("proc.uid", INT, _proc("uid"), None, "real uid")
    add("proc.euid", INT, _proc("euid"), None, "effective uid")
    add("proc.exec_id", STR, _proc("exec_id"), None, "exec id")
    add("proc.is_entrypoint", BOOL, _is_entrypoint, None,
        "in a container: the process is the container's entrypoint (its init, or forked "
        "from it without exec)")
    add("parent.name", STR, _parent_attr("comm"), None, "the parent's task name")
    add("parent.binary", STR, _parent_attr("binary"), None, "the parent's binary")
    add("parent.cmdline", STR, _parent_cmdline, None, "the parent's argv joined")
    add("parent.first_arg", STR, _parent_argv0, None, "the parent's argv[0] (Falco's proc.pexe)")
    add("parent.name_cmdline", STR, _parent_name_cmdline, None,
        "the parent's name then its argv after argv[0] (Falco's proc.pcmdline)")
    add("parent.is_entrypoint", BOOL, _parent_is_entrypoint, None,
        "in a container: the parent is the container's entrypoint")
    add("proc.anames", LIST, _anames, None, "task names of all known ancestors, parent first")
    add("proc.abinaries", LIST, _abinaries, None, "binaries of all known ancestors")
    add("container.id", STR, _sub("container", "id"), None, "container id (absent: host)")
    add("container.name", STR, _sub("container", "name"), None, "container name")
    add("container.image", STR, _sub("container", "image"), None, "image reference")
    add("container.runtime", STR, _sub("container", "runtime"), None, "docker, runc, ...")
    files = frozenset({"open"})
    add("evt.path", STR, _evt_path, frozenset({"open", "syscall"}),
        "open: file.path; syscall: syscall.path")
    add("file.path", STR, _sub("file", "path"), files, "path opened")
    add("file.name", STR, _basename(_sub("file", "path")), files, "basename of file.path")
    add("file.directory", STR, _dirname, files, "directory of file.path")
    add("file.access", STR, _sub("file", "access"), files, "read, write, read-write, path")
    add("file.flags", LIST, _sub("file", "flags"), files, "open flags (O_CREAT, O_TRUNC, ...)")
    add("file.write", BOOL, _file_write, files, "opened for writing, creation or truncation")
    add("file.failed", BOOL, _file_failed, files, "the open failed")
    add("file.error", STR, _sub("file", "error"), files, "errno name of a failed open")
    add("file.root", STR, _sub("file", "root"), files,
        "host: file.path is the host's path (or a container's, from its rootfs: see "
        "container); private: a host process that pivoted into another root (an image "
        "layer being extracted, a build); absent for a failed open")
    add("net.daddr", STR, _sub("network", "daddr"), NET_TYPES, "destination / peer address")
    add("net.dport", INT, _sub("network", "dport"), NET_TYPES, "destination / peer port")
    add("net.saddr", STR, _sub("network", "saddr"), NET_TYPES, "source / local address")
    add("net.sport", INT, _sub("network", "sport"), NET_TYPES, "source / local port")
    add("net.protocol", STR, _sub("network", "protocol"), NET_TYPES, "tcp, udp")
    add("net.family", STR, _sub("network", "family"), NET_TYPES, "ipv4, ipv6")
    conn = frozenset({"connect", "send"})
    add("net.distinct_ports", INT, _distinct("ports"), conn,
        "distinct destination ports this process reached in the scan window")
    add("net.distinct_hosts", INT, _distinct("hosts"), conn,
        "distinct destination addresses this process reached in the scan window")
    sc = frozenset({"syscall"})
    for key, kind, doc in (
            ("name", STR, "syscall name (ptrace, mount, ...; execve for exec-time checks)"),
            ("result", INT, "result, or -errno"), ("error", STR, "errno name when it failed"),
            ("path", STR, "the path it named (mount: target; link/symlink: the target)"),
            ("target", STR, "link/symlink: what the new name points to; rename: old path"),
            ("newpath", STR, "link/symlink/rename: the new name"),
            ("request", STR, "ptrace request (PTRACE_ATTACH, PTRACE_TRACEME, ...)"),
            ("target_pid", INT, "ptrace, process_vm_readv/writev: the target pid"),
            ("namespaces", LIST, "unshare/setns: namespace kinds (mnt, net, user, ...)"),
            ("mode", STR, "chmod family: mode in octal (4755)"),
            ("xattr", STR, "setxattr family: attribute name"),
            ("family", STR, "socket: family (packet, ipv4, ...)"),
            ("sock_type", STR, "socket: type (raw, stream, ...)"),
            ("fstype", STR, "mount: file system type"), ("source", STR, "mount: source"),
            ("stdio_socket", LIST, "exec/dup2: which of fds 0-2 are inet sockets"),
            ("upper_layer", BOOL, "execve: binary on an overlayfs upper layer (drift)"),
            ("tmpfs", BOOL, "execve: binary on tmpfs / ramfs / memfd"),
            ("stdin_pipe", BOOL, "execve: fd 0 is a pipe or FIFO (reported for shells and "
             "script interpreters only)"),
            ("argc", INT, "execve: the argument count (argv[0] included)"),
            ("memfd_name", STR, "memfd_create: the name")):
        add(f"syscall.{key}", kind, _sub("syscall", key), sc, doc)
    add("syscall.failed", BOOL, _sys_failed, sc, "the syscall failed (EPERM, ...)")
    add("syscall.setid", BOOL, _setid, sc, "chmod family: mode sets setuid or setgid")
    add("syscall.peer_addr", STR, _sub2("syscall", "peer", "daddr"), sc,
        "exec/dup2: peer address of the stdio socket")
    add("syscall.peer_port", INT, _sub2("syscall", "peer", "dport"), sc,
        "exec/dup2: peer port of the stdio socket")
    return {x.name: x for x in f}


FIELDS: dict[str, Field] = _build()


# What an output template prints for a field the event does not have (`%field` read as
# None): the reason, never a bare placeholder. Fields not listed print "no <field>".
Absent = Callable[[Ctx], str]


def _result_ok(c: Ctx) -> str:
    return "success"  # file.error / syscall.error are None exactly when the call succeeded


def _host_or(text: str) -> Absent:
    def get(c: Ctx) -> str:
        return "host" if not c.e.get("container") else text
    return get


def _container_name(c: Ctx) -> str:
    ctr = c.e.get("container")
    if not ctr:
        return "host"
    cid = ctr.get("id")
    return str(cid)[:12] if cid else "unnamed container"


def _syscall_path(c: Ctx) -> str:
    s = c.e.get("syscall") or {}
    name = s.get("name")
    if name == "init_module":
        return "module image from memory, no file"
    if s.get("path_from_fd"):
        return "its fd's path not resolved"
    return f"{name or 'the syscall'} names no path"


def _parent(what: str) -> Absent:
    def get(c: Ctx) -> str:
        par = c.e.get("parent")
        if not par:
            return "no parent"
        return f"parent pid {par.get('pid')}: {what} unknown (its exec was not seen)"
    return get


ABSENT: dict[str, Absent] = {
    "file.error": _result_ok,
    "file.root": lambda c: "root unknown (the open failed: path as written)",
    "syscall.error": _result_ok,
    "container.id": _host_or("unknown container"),
    "container.name": _container_name,
    "container.image": _host_or("image unknown"),
    "container.runtime": _host_or("runtime unknown"),
    "parent.name": _parent("name"),
    "parent.binary": _parent("binary"),
    "parent.cmdline": _parent("command line"),
    "syscall.path": _syscall_path,
    "evt.path": _syscall_path,
    "syscall.peer_addr": lambda c: "no inet peer",
    "syscall.peer_port": lambda c: "no inet peer",
    "syscall.target_pid": lambda c: "no target pid",
    "syscall.fstype": lambda c: "fstype not given",
    "syscall.namespaces": lambda c: "no namespace flags",
    "proc.cwd": lambda c: "cwd unknown (process older than the agent)",
}


def absent_text(name: str, c: Ctx) -> str:
    """Why `%name` has no value in this event (ABSENT; default "no <name>")."""
    f = ABSENT.get(name)
    if f is None:
        return f"no {name}"
    try:
        return f(c)
    except (KeyError, TypeError, AttributeError):
        return f"no {name}"
