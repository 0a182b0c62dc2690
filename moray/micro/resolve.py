"""A path as a workload process gave it -> the file the kernel will reach, seen from the
supervisor (same root and mount namespace; moray.micro.supervisor checks both).

Relative paths start at the caller's cwd (``/proc/<tid>/cwd``) or its dirfd
(``/proc/<tid>/fd/N``); symbolic links are followed as the kernel would, with two
differences handled here: ``/proc/self`` and ``/proc/thread-self`` name the *caller*
(read from the supervisor they would name the supervisor; ``/dev/fd`` and
``/dev/stdin``... link through them), and the "magic" links of ``/proc/<pid>/`` (fd/N,
cwd, root, exe) are followed by their text, which is the path the kernel prints for the
object they hold (best effort: a file deleted or moved since has another text; the
identity check of moray.micro.supervisor covers that case for exact paths).
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAX_LINKS = 40
_PROC_PID = re.compile(r"^/proc/\d+(/task/\d+)?$")


@dataclass(frozen=True, slots=True)
class Resolved:
    path: str          # absolute, no '.', '..', or symbolic links (as far as they exist)
    exists: bool       # False: the rest after the first missing name is kept as written
    special: bool = False   # a magic link to a non-file (socket:[..], pipe:[..], anon_inode)


def base_of(tid: int, dirfd: int, proc: str = "/proc") -> str:
    """The directory a relative path starts at: cwd for AT_FDCWD, else the dirfd's."""
    if dirfd == -100:
        return os.readlink(f"{proc}/{tid}/cwd")
    return os.readlink(f"{proc}/{tid}/fd/{dirfd}")


def resolve(path: str, base: str, pid: int, tid: int, *, follow_last: bool = True,
            proc: str = "/proc") -> Resolved:
    """Resolve *path* (relative to *base*) for the process *pid* / thread *tid*."""
    todo = [n for n in reversed(path.split("/"))]
    cur = "/" if path.startswith("/") else base
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            cur = posixpath.dirname(cur) or "/"
            continue
        last = not any(n not in ("", ".") for n in todo)
        if cur == "/proc" and name == "self":
            cur = f"/proc/{pid}"
            continue
        if cur == "/proc" and name == "thread-self":
            cur = f"/proc/{pid}/task/{tid}"
            continue
        nxt = posixpath.join(cur, name)
        if last and not follow_last:
            return Resolved(nxt, os.path.lexists(_host(nxt, proc)))
        try:
            st = os.lstat(_host(nxt, proc))
        except (FileNotFoundError, NotADirectoryError):
            rest = [n for n in reversed(todo) if n not in ("",)]
            return Resolved(posixpath.normpath(posixpath.join(nxt, *rest)), False)
        except PermissionError:
            rest = [n for n in reversed(todo) if n not in ("",)]
            return Resolved(posixpath.normpath(posixpath.join(nxt, *rest)), False)
        if not stat.S_ISLNK(st.st_mode):
            cur = nxt
            continue
        links += 1
        if links > MAX_LINKS:
            return Resolved(nxt, False)
        try:
            target = os.readlink(_host(nxt, proc))
        except OSError:
            return Resolved(nxt, False)
        if target.startswith("/"):
            target = target.removesuffix(" (deleted)")
            cur = "/"
            todo.extend(reversed(target.split("/")))
        elif _PROC_PID.match(cur) or _PROC_PID.match(posixpath.dirname(cur)):
            # a magic link to something that is not a path (socket:[1], anon_inode:...)
            if ":" in target and not target.startswith("."):
                return Resolved(target, True, special=True)
            todo.extend(reversed(target.split("/")))
        else:
            todo.extend(reversed(target.split("/")))
    return Resolved(cur, True)


def _host(path: str, proc: str) -> str:
    """*path* as the supervisor reaches it (only /proc may be elsewhere, for tests)."""
    if proc != "/proc" and (path == "/proc" or path.startswith("/proc/")):
        return proc + path[5:]
    return path


# --------------------------------------------------------------------------- fd walk

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class ForbiddenEntry(Exception):
    """The path goes through a /proc entry of a process the caller must not reach
    through the supervisor (the supervisor's own)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def openat2(path: str, flags: int, resolve: int, dir_fd: int | None = None) -> int:
    how = struct.pack("=QQQ", flags, 0, resolve)
    raw = os.fsencode(path)
    fd = _libc.syscall(SYS_OPENAT2, -100 if dir_fd is None else dir_fd, raw, how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def open_path(path: str, dir_fd: int | None, flags: int, pid: int, tid: int,
              forbidden: Callable[[int], bool], proc_dev: int) -> int:
    """An O_PATH fd of what *path* names for the caller *pid*/*tid* (O_NOFOLLOW and
    O_DIRECTORY of *flags* honoured). Without magic links (``/proc/<pid>/fd/N``, cwd,
    root, exe) the kernel resolves it (openat2 RESOLVE_NO_MAGICLINKS); with them, one
    name at a time here, so that ``/proc/self`` is the caller and no entry of a process
    that *forbidden* names is entered, whichever symbolic links lead there (raises
    ForbiddenEntry). *proc_dev*: st_dev of procfs."""
    global _have_openat2
    base = flags & (os.O_NOFOLLOW | os.O_DIRECTORY) | os.O_PATH | os.O_CLOEXEC
    if _have_openat2:
        try:
            return openat2(path, base, RESOLVE_NO_MAGICLINKS, dir_fd)
        except OSError as err:
            if err.errno in (errno.ENOSYS, errno.EPERM):
                # before 5.6, or refused by the container runtime's seccomp profile:
                # every path is walked here from now on
                _have_openat2 = False
            elif err.errno != errno.ELOOP:
                raise
    return _walk(path, dir_fd, flags, pid, tid, forbidden, proc_dev)


_have_openat2 = True


def _walk(path: str, dir_fd: int | None, flags: int, pid: int, tid: int,
          forbidden: Callable[[int], bool], proc_dev: int) -> int:
    fds: list[int] = []

    def keep(fd: int) -> int:
        fds.append(fd)
        return fd

    try:
        root = keep(os.open("/", os.O_PATH | os.O_CLOEXEC))
        if path.startswith("/"):
            cur = root
        elif dir_fd is None:
            cur = keep(os.open(".", os.O_PATH | os.O_CLOEXEC))
        else:
            cur = keep(os.dup(dir_fd))
        todo = path.split("/")
        links = 0
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            last = not any(n not in ("", ".") for n in todo)
            st_cur = os.fstat(cur)
            if st_cur.st_dev == proc_dev and name.isdigit() and _is_proc_root(cur) \
                    and forbidden(int(name)):
                raise ForbiddenEntry(f"/proc/{name}")
            nxt = keep(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur))
            st = os.fstat(nxt)
            follow = not last or not flags & os.O_NOFOLLOW
            if not stat.S_ISLNK(st.st_mode) or not follow:
                cur = nxt
                continue
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            if st.st_dev == proc_dev:
                if _is_proc_root(cur) and name in ("self", "thread-self"):
                    target = str(pid) if name == "self" else f"{pid}/task/{tid}"
                else:   # a magic link: the kernel follows it (from its directory, which
                    # is held) to its object
                    cur = keep(os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=cur))
                    continue
            else:
                target = os.readlink("", dir_fd=nxt)
            if target.startswith("/"):
                cur = root
            todo = target.split("/") + todo
        if flags & os.O_DIRECTORY and not stat.S_ISDIR(os.fstat(cur).st_mode):
            raise OSError(errno.ENOTDIR, "not a directory", path)
        out = os.dup(cur)
        os.set_inheritable(out, False)
        return out
    finally:
        for fd in fds:
            os.close(fd)


def _is_proc_root(fd: int) -> bool:
    """*fd* is procfs's root directory (its inode is 1)."""
    return os.fstat(fd).st_ino == 1
