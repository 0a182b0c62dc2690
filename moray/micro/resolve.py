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

import os
import posixpath
import re
import stat
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
