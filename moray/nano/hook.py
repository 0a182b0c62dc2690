"""The audit hook (PEP 578): Python's audit events -> a decision of :mod:`.rules` -> an
event (:mod:`.events`) and, in enforce mode, ``PermissionError`` raised inside the
operation, before it happens.

The data: one :class:`Hook` per function process, installed once by :mod:`.boot` before
the handler is imported (``sys.addaudithook`` cannot be undone from Python). It holds:

- the handlers, one per audited event it judges (``HANDLED``); any other event returns
  at the first dictionary lookup;
- ``resolved``: address -> the allowed names it was resolved from, filled by the wrapped
  resolvers (``socket.getaddrinfo``, ``gethostbyname(_ex)``) after an allowed name was
  looked up, read when a socket connects to an address; bounded (cleared at
  ``MAX_RESOLVED``). Removing the wrappers only loses allowances: an address nobody
  resolved through them is judged by the CIDR rules alone.

The hook never runs the caller's code while it judges (no ``__fspath__``, ``__str__``,
``__iter__`` or property of the caller's classes): a path object that could answer the
hook and the system call differently is refused (:class:`Untrusted`).

Standard library only (runs inside the function).
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import sys

from .events import Reporter
from .rules import PROTO, WRITE_FLAGS, Denial, Rules, normalize_host, parse_ip

TYPE_CHECKING = False  # typing is not imported at run time (cold start: rules.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    Verdict: TypeAlias = tuple[Denial, dict[str, Any]] | None

_EXEC_EVENTS = frozenset(("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn",
                          "os.system", "pty.spawn"))
MAX_RESOLVED = 4096


def _kind(event: str) -> str:
    if event in _EXEC_EVENTS:
        return "exec"
    if event.startswith("socket."):
        return "egress"
    if event.startswith("ctypes.") or event in ("import", "exec"):
        return "code"
    return "file"

MAX_ARGS = 1024  # bytes of argv copied into an event, as the agent's --args-max


class Untrusted(Exception):
    """A path or name given as an object whose text the hook cannot know without running
    the caller's code (a custom ``__fspath__``: it may answer the hook and the system call
    differently). Refused: ``type_name`` says which type."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


def _text(value: Any) -> str:
    """The text the system call gets for ``value``, without running the caller's code:
    ``str``/``bytes`` (subclasses: their characters, not an overridden ``__str__``), or a
    ``pathlib`` path whose class keeps pathlib's own ``__fspath__`` and ``__str__``."""
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is bytes:
        return os.fsdecode(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes | bytearray):
        return os.fsdecode(bytes(memoryview(value)))
    pathlib = sys.modules.get("pathlib")
    if (pathlib is not None and isinstance(value, pathlib.PurePath)
            and t.__fspath__ is pathlib.PurePath.__fspath__
            and t.__str__ is pathlib.PurePath.__str__):
        return str(value)
    if isinstance(value, int):
        return str(int.__index__(value))
    raise Untrusted(t.__name__)


def _show(value: Any) -> str:
    """For an event only: ``_text``, or the type's name."""
    try:
        return _text(value)
    except Untrusted as u:
        return f"<{u.type_name}>"


def _items(args: Any) -> list[Any]:
    """The items of an argv list or tuple, without the caller's ``__iter__``."""
    if isinstance(args, list):
        return list.copy(args)
    if isinstance(args, tuple):
        return list(tuple.__getitem__(args, slice(None)))
    return [args]


def _argv(args: Any) -> list[str]:
    out, size = [], 0
    for a in _items(args):
        text = _show(a)
        size += len(text) + 1
        if size > MAX_ARGS:
            break
        out.append(text)
    return out


def _port(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes) and value.isdigit():
        return int(value)
    return None  # a service name, or none


class Hook:
    """``sys.addaudithook(Hook(rules, reporter))``."""

    def __init__(self, rules: Rules, reporter: Reporter,
                 environ: dict[str, str] | None = None, proc: str = "/proc") -> None:
        self.rules = rules
        self.reporter = reporter
        self.environ = os.environ if environ is None else environ
        self.proc = proc
        self.resolved: dict[str, tuple[str, ...]] = {}
        self.fork_exec_wrapped = False
        self.blocked = 0
        self.would_block = 0
        self.unreadable = 0  # handled events whose arguments were not as documented
        self._handlers: dict[str, Callable[[tuple[Any, ...]], Verdict]] = {
            "open": self._open,
            "os.rename": self._two_paths, "os.link": self._link,
            "os.symlink": self._symlink, "os.remove": self._path_dirfd,
            "os.rmdir": self._path_dirfd, "os.mkdir": self._path_mode_dirfd,
            "os.chmod": self._path_mode_dirfd, "os.chown": self._chown,
            "os.utime": self._utime, "os.truncate": self._first_path,
            "os.setxattr": self._first_path, "os.removexattr": self._first_path,
            "os.chflags": self._first_path,
            "subprocess.Popen": self._popen, "os.exec": self._exec,
            "os.posix_spawn": self._exec, "os.spawn": self._spawn,
            "os.system": self._system, "pty.spawn": self._pty_spawn,
            "socket.connect": self._connect, "socket.sendto": self._connect,
            "socket.sendmsg": self._connect,
            "socket.getaddrinfo": self._getaddrinfo, "socket.__new__": self._new_socket,
            "socket.gethostbyname": self._gethostbyname,
            "socket.gethostbyname_ex": self._gethostbyname,
            "import": self._import, "exec": self._exec_code, "ctypes.dlopen": self._dlopen,
            "ctypes.dlsym": self._dlsym, "ctypes.call_function": self._ctypes_call,
            "ctypes.cdata": self._ctypes_cdata,
        }

    # --- the hook ----------------------------------------------------------------------

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        # No re-entry guard: nothing the hook itself does raises an event it handles, and
        # caller code that runs inside it (none should: _text) must be judged, not waved
        # through.
        handler = self._handlers.get(event)
        if handler is None:
            return
        try:
            verdict = handler(args)
        except Untrusted as u:
            verdict = (Denial(_kind(event), "untrusted-object", f"<{u.type_name}>",
                              f"a path or name given as a {u.type_name}, whose text the "
                              f"system call gets cannot be checked; pass a str"), {})
        except (IndexError, TypeError, ValueError, AttributeError, OSError) as err:
            # arguments not as documented (another Python version, a hand-made
            # sys.audit call): refused, loudly, rather than waved through
            self.unreadable += 1
            verdict = (Denial(_kind(event), "unreadable-event", event,
                              f"the {event} audit event's arguments could not be read "
                              f"({type(err).__name__}: {err})"), {})
        if verdict is not None:
            self._act(event, *verdict)

    def _act(self, event: str, denial: Denial, extra: dict[str, Any]) -> None:
        enforce = self.rules.enforce
        if enforce:
            self.blocked += 1
        else:
            self.would_block += 1
        self.reporter.report("blocked" if enforce else "would-block", denial.kind,
                             denial.rule, denial.target, denial.reason, event, extra)
        if enforce:
            raise PermissionError(
                errno.EACCES, f"moray nano: {denial.kind} denied by function policy "
                f"{self.rules.name!r} ({denial.rule}): {denial.reason}", denial.target)

    # --- files --------------------------------------------------------------------------

    def path(self, value: Any, dir_fd: Any = None) -> str | None:
        """An audited path argument -> absolute, normalized, symbolic links resolved (as
        the kernel would find it now); None for a file descriptor."""
        if value is None or isinstance(value, int):
            return None
        p = _text(value)
        if not os.path.isabs(p):
            try:
                base = (os.getcwd() if dir_fd is None or not isinstance(dir_fd, int)
                        else os.readlink(f"{self.proc}/self/fd/{dir_fd}"))
            except OSError:
                base = "/"
            p = os.path.join(base, p)
        return os.path.realpath(p)

    def _write(self, path: str | None, what: str) -> Verdict:
        if path is None:
            return None
        d = self.rules.write(path)
        return None if d is None else (d, {"file": {"path": path, "access": "write",
                                                    "operation": what}})

    def _open(self, args: tuple[Any, ...]) -> Verdict:
        target, mode, flags = args[0], args[1], args[2]
        if isinstance(flags, int) and flags >= 0:
            write = bool(flags & WRITE_FLAGS)
        else:
            write = isinstance(mode, str) and any(c in mode for c in "wax+")
        if not write and not self.rules.read_deny:
            return None
        path = self.path(target)
        if path is None:
            return None
        d = (self.rules.write(path) or self.rules.read(path)) if write else \
            self.rules.read(path)
        if d is None:
            return None
        return d, {"file": {"path": path, "access": "write" if write else "read",
                            "operation": "open",
                            "flags": flags}}

    def _two_paths(self, args: tuple[Any, ...]) -> Verdict:  # os.rename(src, dst, sfd, dfd)
        return (self._write(self.path(args[0], args[2]), "rename")
                or self._write(self.path(args[1], args[3]), "rename"))

    def _link(self, args: tuple[Any, ...]) -> Verdict:  # os.link(src, dst, sfd, dfd)
        # a hard link is a second name for the file: a file denied for reading gets none
        src = self.path(args[0], args[2])
        d = self.rules.read(src) if src is not None else None
        if d is not None:
            return d, {"file": {"path": src, "access": "read", "operation": "link"}}
        return self._write(self.path(args[1], args[3]), "link")

    def _symlink(self, args: tuple[Any, ...]) -> Verdict:  # os.symlink(src, dst, dir_fd)
        dst = args[1]
        if dst is None or isinstance(dst, int):
            return None
        p = _text(dst)  # the link itself, not what it points to
        if not os.path.isabs(p):
            p = os.path.join(os.getcwd(), p)
        return self._write(os.path.join(os.path.realpath(os.path.dirname(p)),
                                        os.path.basename(p)), "symlink")

    def _path_dirfd(self, args: tuple[Any, ...]) -> Verdict:  # os.remove/rmdir(path, dir_fd)
        return self._write(self.path(args[0], args[1]), "remove")

    def _path_mode_dirfd(self, args: tuple[Any, ...]) -> Verdict:  # mkdir/chmod(p, mode, fd)
        return self._write(self.path(args[0], args[2]), "mkdir/chmod")

    def _chown(self, args: tuple[Any, ...]) -> Verdict:  # os.chown(path, uid, gid, dir_fd)
        return self._write(self.path(args[0], args[3]), "chown")

    def _utime(self, args: tuple[Any, ...]) -> Verdict:  # os.utime(path, times, ns, dir_fd)
        return self._write(self.path(args[0], args[3]), "utime")

    def _first_path(self, args: tuple[Any, ...]) -> Verdict:
        return self._write(self.path(args[0]), "truncate/xattr/chflags")

    # --- programs -----------------------------------------------------------------------

    def _program(self, name: Any, argv: Any, env: Any = None) -> Verdict:
        given = _text(name)
        found = given
        if "/" not in given:
            path = None
            if isinstance(env, dict):
                path = dict.get(env, "PATH", dict.get(env, b"PATH"))
            if path is None:
                path = self.environ.get("PATH", os.defpath)
            import shutil  # only when a program is started

            found = shutil.which(given, path=_text(path)) or given
        elif not os.path.isabs(given):
            found = os.path.join(os.getcwd(), given)
        real = os.path.realpath(found) if os.path.isabs(found) else found
        d = self.rules.exec(found)
        if d is None or (real != found and self.rules.exec(real) is None):
            return None
        return (Denial(d.kind, d.rule, real, d.reason),
                {"exec": {"binary": real, "filename": given, "args": _argv(argv)}})

    def _popen(self, args: tuple[Any, ...]) -> Verdict:  # (executable, args, cwd, env)
        executable, argv = args[0], args[1]
        if executable is None:
            seq = _items(argv)
            executable = seq[0] if seq else ""
        return self._program(executable, argv, args[3])

    def _exec(self, args: tuple[Any, ...]) -> Verdict:  # os.exec*/posix_spawn(path, argv, env)
        return self._program(args[0], args[1], args[2])

    def _spawn(self, args: tuple[Any, ...]) -> Verdict:  # os.spawn*(mode, path, args, env)
        return self._program(args[1], args[2], args[3])

    def _system(self, args: tuple[Any, ...]) -> Verdict:  # os.system(command)
        return self._program("/bin/sh", ["/bin/sh", "-c", _text(args[0])])

    def _pty_spawn(self, args: tuple[Any, ...]) -> Verdict:  # pty.spawn(argv)
        seq = _items(args[0])
        return self._program(seq[0] if seq else "", seq)

    # --- network ------------------------------------------------------------------------

    def _connect(self, args: tuple[Any, ...]) -> Verdict:  # (socket, address)
        sock, address = args[0], args[1]
        if not isinstance(sock, _socket.socket):
            return None
        family = _socket.socket.family.__get__(sock)  # not a subclass's property
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
            return None  # unix sockets, netlink, a connected socket's sendmsg (None)
        address = tuple.__getitem__(address, slice(None))
        host = _text(address[0]) or ("0.0.0.0" if family == socket.AF_INET else "::")
        if host == "<broadcast>":
            host = "255.255.255.255"
        port = address[1] if isinstance(address[1], int) else -1
        kind = _socket.socket.type.__get__(sock) & 0xF
        proto = PROTO["tcp"] if kind == socket.SOCK_STREAM else (
            PROTO["udp"] if kind == socket.SOCK_DGRAM else 0)
        d = self.rules.connect(host, port, proto, self.resolved.get(host, ()))
        ip = parse_ip(host)
        if d is None and ip is None and self.rules.egress_deny:
            # a name the socket resolves itself (no audit event for that lookup): its
            # addresses are looked up here and judged against the deny list (best
            # effort: DNS may answer the socket differently a moment later)
            try:
                infos = _socket.getaddrinfo(host, port, family, kind)
            except OSError:
                infos = []
            for info in infos:
                d = self.rules.connect(str(info[4][0]), port, proto, (host,))
                if d is not None:
                    break
        if d is None:
            return None
        return d, {"network": {
            "family": "ipv4" if family == socket.AF_INET else "ipv6",
            "protocol": {6: "tcp", 17: "udp"}.get(proto, str(kind)),
            "daddr": host if ip is not None else None, "dport": port,
            "host": None if ip is not None else host,
            "resolved_from": list(self.resolved.get(host, ())) or None}}

    def _new_socket(self, args: tuple[Any, ...]) -> Verdict:  # (socket, family, type, proto)
        family, kind = args[1], args[2]
        if not (self.rules.egress_restricted or self.rules.egress_deny):
            return None
        raw = isinstance(kind, int) and kind >= 0 and (kind & 0xF) == socket.SOCK_RAW
        if family == getattr(socket, "AF_PACKET", -2) or raw:
            # packets built by the caller, sent to an interface or an address without
            # connect: no destination the egress rules could judge
            what = "AF_PACKET" if family == getattr(socket, "AF_PACKET", -2) else "SOCK_RAW"
            return (Denial("egress", "network.egress", f"{what} socket",
                           "raw sockets are not allowed when egress is restricted"),
                    {"network": {"operation": "socket", "family": int(family),
                                 "type": int(kind)}})
        return None

    def _lookup(self, host: Any, port: Any) -> Verdict:
        if host is None:
            return None
        name = _text(host)
        d = self.rules.resolve(name, _port(port))
        if d is None:
            return None
        return d, {"network": {"host": name, "dport": _port(port), "operation": "resolve"}}

    def _getaddrinfo(self, args: tuple[Any, ...]) -> Verdict:  # (host, port, fam, type, proto)
        return self._lookup(args[0], args[1])

    def _gethostbyname(self, args: tuple[Any, ...]) -> Verdict:  # (hostname,)
        return self._lookup(args[0], None)

    # --- native code ---------------------------------------------------------------------

    def _native(self, what: str) -> Verdict:
        d = self.rules.native(what)
        return None if d is None else (d, {"code": {"via": "ctypes", "what": what}})

    def _import(self, args: tuple[Any, ...]) -> Verdict:  # (module, filename, path, ...)
        # ctypes' foreign calls (memmove, a function found in a library) raise no audit
        # event: with ctypes refused, the module itself is refused
        if args[0] in ("ctypes", "_ctypes") and self.rules.ctypes == "deny":
            return self._native(f"import {args[0]}")
        if args[0] == "_posixsubprocess" and self.fork_exec_wrapped:
            # a fresh copy of the module (after del sys.modules[...]) has the unwrapped
            # fork_exec: programs started through it would raise no event at all
            return (Denial("exec", "exec", "_posixsubprocess",
                           "a second copy of _posixsubprocess would start programs "
                           "unchecked"), {"exec": {"binary": None, "filename": None,
                                                   "args": []}})
        return None

    def _exec_code(self, args: tuple[Any, ...]) -> Verdict:  # (code_object,)
        if self.rules.drift == "allow":
            return None
        name = getattr(args[0], "co_filename", None)
        if type(name) is not str or not name.startswith("/"):
            return None  # "<string>", "<frozen ...>": not from a file
        path = os.path.realpath(name)
        d = self.rules.code_file(path)
        return None if d is None else (d, {"code": {"via": "python", "what": path}})

    def _dlopen(self, args: tuple[Any, ...]) -> Verdict:  # (name,)
        return self._native(f"dlopen {_text(args[0]) if args[0] is not None else 'self'}")

    def _dlsym(self, args: tuple[Any, ...]) -> Verdict:  # (handle, name)
        return self._native(f"dlsym {_text(args[1])}")

    def _ctypes_call(self, args: tuple[Any, ...]) -> Verdict:  # (func_pointer, arguments)
        return self._native(f"call {args[0]:#x}" if isinstance(args[0], int) else "call")

    def _ctypes_cdata(self, args: tuple[Any, ...]) -> Verdict:  # (address,)
        return self._native(f"object at {args[0]:#x}" if isinstance(args[0], int)
                            else "object at an address")

    # --- the resolvers' results ---------------------------------------------------------

    def remember(self, name: Any, addresses: list[str]) -> None:
        """``addresses`` were resolved from ``name``: when ``name`` is an allowed host,
        connections to them are judged by its rule."""
        if not self.rules.egress_restricted or name is None:
            return
        host = normalize_host(_text(name))
        if parse_ip(host) is not None or self.rules.host_rule(host, None) is None:
            return
        if len(self.resolved) >= MAX_RESOLVED:
            self.resolved.clear()
        for a in addresses:
            names = self.resolved.get(a, ())
            if host not in names:
                self.resolved[a] = (*names, host)

    def wrap_fork_exec(self, mod: Any) -> None:
        """Wrap ``_posixsubprocess.fork_exec``, which ``subprocess`` and
        ``multiprocessing`` call and which starts a program without any audit event: a
        caller of it directly is judged as a ``subprocess.Popen`` would be (the first
        candidate of ``executable_list`` that is executable: the one that will run)."""
        real = mod.fork_exec
        program, act = self._program, self._act

        def fork_exec(*args: Any, **kwargs: Any) -> Any:
            argv = args[0] if args else kwargs.get("args")
            candidates = args[1] if len(args) > 1 else kwargs.get("executable_list")
            for c in _items(candidates) if candidates is not None else ():
                path = _text(c)
                if os.access(path, os.X_OK):
                    verdict = program(path, argv)
                    if verdict is not None:
                        act("_posixsubprocess.fork_exec", *verdict)
                    break
            return real(*args, **kwargs)

        fork_exec.__doc__ = real.__doc__
        mod.fork_exec = fork_exec
        self.fork_exec_wrapped = True

    def wrap_resolvers(self, mod: Any = socket) -> None:
        """Wrap ``socket.getaddrinfo`` / ``gethostbyname`` / ``gethostbyname_ex`` (every
        Python client resolves through them: ``create_connection``, http.client, urllib3,
        asyncio) so that the addresses of allowed names are known at connect."""
        real_gai, real_gbn, real_gbn_ex = (mod.getaddrinfo, mod.gethostbyname,
                                           mod.gethostbyname_ex)
        remember = self.remember

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            res = real_gai(host, port, *args, **kwargs)
            remember(host, [str(r[4][0]) for r in res])
            return res

        def gethostbyname(hostname: Any) -> Any:
            res = real_gbn(hostname)
            remember(hostname, [res])
            return res

        def gethostbyname_ex(hostname: Any) -> Any:
            res = real_gbn_ex(hostname)
            remember(hostname, list(res[2]))
            return res

        for fn, real in ((getaddrinfo, real_gai), (gethostbyname, real_gbn),
                         (gethostbyname_ex, real_gbn_ex)):
            fn.__doc__ = real.__doc__
            setattr(fn, "__wrapped__", real)  # noqa: B010 (mypy: functions have no such attr)
        mod.getaddrinfo, mod.gethostbyname, mod.gethostbyname_ex = (
            getaddrinfo, gethostbyname, gethostbyname_ex)


__all__ = ["MAX_ARGS", "MAX_RESOLVED", "Hook"]
