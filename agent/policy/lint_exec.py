"""Warnings (never errors) `policy lint` gives about exec rules that hold less than they
seem to (issue 13): a denied path that is one name of a multi-call binary, and the
dynamic loader on an allow-list or a deny list.

* Multi-call binaries (busybox, toybox, a single-binary coreutils) run any of their
  applets under any of their names (`busybox wget`, a bare applet name through
  `/proc/self/exe`, another symlink or hard link). Denying one name denies that name only.
  A denied path is looked up on this host and in each image root given (`--image-root`):
  its symlinks followed inside that root, a warning when it ends at a file named like a
  well-known multi-call binary, or at a regular file with other names (hard links, or
  symlinks to it in the usual bin directories).
* The loader (`ld-linux*.so*`, `ld-musl-*.so*`) runs any program given to it. The
  allow-list applies to execs, not to mappings (every program maps its libraries): an
  allow-list that lists the loader lets `ld.so /any/program` run any program that deny and
  drift do not stop. Denying the loader stops every dynamically linked program.

`exec_warnings(policy, roots)` is pure apart from reading those roots; the CLI prints
what it returns.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moray.api.policy.model import PathPattern, Policy

MULTI_CALL = ("busybox", "toybox", "coreutils")
BIN_DIRS = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
LOADERS = (
    "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1", "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
    "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1", "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1", "/lib64/ld64.so.2", "/lib/ld-linux.so.2",
)
MAX_LINKS = 40


@dataclass(frozen=True, slots=True)
class LintWarning:
    field: str     # spec.exec.deny[0]
    text: str      # the rule as written
    message: str


def resolve_in(root: str, path: str) -> str | None:
    """*path* with every symlink followed as seen from *root* (absolute targets are
    relative to root); the host path of the result, or None when it does not exist."""
    parts = [p for p in path.split("/") if p]
    cur = ""
    for _ in range(MAX_LINKS):
        if not parts:
            return os.path.join(root, cur.lstrip("/")) if cur else root
        name = parts.pop(0)
        nxt = f"{cur}/{name}"
        host = os.path.join(root, nxt.lstrip("/"))
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            base = "" if target.startswith("/") else cur
            parts = [p for p in f"{base}/{target}".split("/") if p] + parts
            cur = ""
            # normalise "..": walk again from the root over the joined parts
            norm: list[str] = []
            for p in parts:
                if p == "..":
                    if norm:
                        norm.pop()
                elif p != ".":
                    norm.append(p)
            parts = norm
            continue
        cur = nxt
    return None


def _other_names(root: str, host_file: str) -> list[str]:
    """Other names of the file in the usual bin directories of *root* (symlinks to it)."""
    names = []
    seen: set[str] = set()
    for d in BIN_DIRS:
        hd = os.path.join(root, d.lstrip("/"))
        if os.path.realpath(hd) in seen:  # /bin -> usr/bin (merged /usr): one directory
            continue
        seen.add(os.path.realpath(hd))
        try:
            entries = os.listdir(hd)
        except OSError:
            continue
        for e in entries:
            if not os.path.islink(os.path.join(hd, e)):
                continue
            r = resolve_in(root, f"{d}/{e}")  # absolute targets: inside the root
            if r is not None and os.path.realpath(r) == os.path.realpath(host_file):
                names.append(f"{d}/{e}")
            if len(names) > 3:
                return names
    return names


def multi_call(root: str, path: str) -> str | None:
    """Why *path* is a name of a multi-call binary in *root*, or None."""
    host = resolve_in(root, path)
    if host is None:
        return None
    try:
        st = os.stat(host)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    real = "/" + os.path.relpath(host, root) if root != "/" else host
    base = os.path.basename(host)
    if base in MULTI_CALL and os.path.basename(path) != base:
        return f"{path} is {real}, the multi-call binary {base}"
    if base in MULTI_CALL:
        return None  # the binary itself is denied: every applet goes with it
    if st.st_nlink > 1:
        return (f"{path} has {st.st_nlink} hard links: the same program runs under its "
                "other names")
    others = [n for n in _other_names(root, host) if n != path]
    if len(others) >= 2:
        return (f"{path} is {real}, which also runs as {', '.join(others[:3])}: a "
                "multi-call binary")
    return None


def _symlink_target(root: str, path: str) -> str | None:
    """The real path of *path* in *root* when it is reached through a symlink."""
    host = resolve_in(root, path)
    if host is None:
        return None
    real = "/" + os.path.relpath(host, root) if root != "/" else host
    return real if real != path else None


def _loader_matches(p: PathPattern) -> list[str]:
    return [ld for ld in LOADERS if p.matches(ld)]


def exec_warnings(policy: Policy, roots: Sequence[str] = ("/",)) -> list[LintWarning]:
    out: list[LintWarning] = []
    for i, p in enumerate(policy.exec.deny):
        where = f"spec.exec.deny[{i}]"
        if p.exact:
            for root in roots:
                why = multi_call(root, p.path)
                if why:
                    label = "this host" if root == "/" else f"image {root}"
                    out.append(LintWarning(where, p.text, (
                        f"{why} ({label}): `busybox wget`, a bare applet name and its other "
                        "names run the same code; deny the binary itself or use an "
                        "allow-list (docs/policy.md, multi-call binaries)")))
                    break
            else:
                for root in roots:
                    target = _symlink_target(root, p.path)
                    if target:
                        label = "this host" if root == "/" else f"image {root}"
                        out.append(LintWarning(where, p.text, (
                            f"{p.path} is a symlink to {target} ({label}): an exec by this "
                            "name is denied, but a mapping (ld.so, mmap) is matched by the "
                            f"file's real path only; deny {target} too")))
                        break
        lds = _loader_matches(p)
        if lds:
            out.append(LintWarning(where, p.text, (
                f"denies the dynamic loader ({lds[0]}): every dynamically linked program "
                "maps it and will fail to start")))
    for i, p in enumerate(policy.exec.allow or ()):
        lds = _loader_matches(p)
        if lds:
            out.append(LintWarning(f"spec.exec.allow[{i}]", p.text, (
                f"allows the dynamic loader ({lds[0]}): `ld.so PROGRAM` runs any program "
                "an allow-list would refuse (deny and drift still apply to what it maps; "
                "the allow-list does not apply to mappings)")))
    return out


def line_of(source_lines: Iterable[str], text: str, after: int = 0) -> int | None:
    """1-based number of the first line (from *after*) that mentions *text*."""
    for n, line in enumerate(source_lines, 1):
        if n > after and text in line:
            return n
    return None
