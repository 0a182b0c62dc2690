"""A workload's path -> the file the kernel reaches (moray/micro/resolve.py), on a real
directory tree and this process's own /proc entries."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from moray.micro.resolve import base_of, resolve


def test_relative_dotdot_and_links(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow").write_text("x")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "ln").symlink_to("../etc/shadow")
    (tmp_path / "abs").symlink_to(tmp_path / "etc")
    pid = os.getpid()
    r = resolve("b/../ln", str(tmp_path / "a"), pid, pid)
    assert r.path == str(tmp_path / "etc" / "shadow") and r.exists
    assert resolve(str(tmp_path / "abs/./shadow"), "/", pid, pid).path == str(
        tmp_path / "etc" / "shadow")
    # O_NOFOLLOW / AT_SYMLINK_NOFOLLOW: the last link itself
    r = resolve("ln", str(tmp_path / "a"), pid, pid, follow_last=False)
    assert r.path == str(tmp_path / "a" / "ln") and r.exists
    # a file to be created: its directory resolved, the rest as written
    r = resolve("abs/new/x", str(tmp_path), pid, pid)
    assert r.path == str(tmp_path / "etc" / "new" / "x") and not r.exists


def test_link_loops_stop(tmp_path: Path) -> None:
    (tmp_path / "l1").symlink_to("l2")
    (tmp_path / "l2").symlink_to("l1")
    assert not resolve(str(tmp_path / "l1"), "/", 1, 1).exists


def test_proc_self_names_the_caller(tmp_path: Path) -> None:
    """/proc/self, /dev/fd and /dev/stdin as the *caller* sees them, not the supervisor."""
    target = tmp_path / "secret"
    target.write_text("s")
    fd = os.open(target, os.O_RDONLY)
    try:
        me = os.getpid()
        # as if a process with our pid asked: /proc/self/fd/N and /dev/fd/N are the file
        for path in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}", f"/proc/{me}/fd/{fd}"):
            r = resolve(path, "/", me, me)
            assert r.path == str(target), path
        # another process's view: /proc/self is its pid, never ours
        r = resolve("/proc/self/cwd", "/", 1, 1)
        assert not r.path.startswith(f"/proc/{me}")
        tid = threading.get_native_id()
        assert resolve("/proc/thread-self/fd", "/", me, tid).path == f"/proc/{me}/task/{tid}/fd"
    finally:
        os.close(fd)


def test_magic_links_to_non_files() -> None:
    r_fd, w_fd = os.pipe()
    try:
        me = os.getpid()
        r = resolve(f"/proc/self/fd/{r_fd}", "/", me, me)
        assert r.special and r.path.startswith("pipe:[")
    finally:
        os.close(r_fd)
        os.close(w_fd)


def test_base_of(tmp_path: Path) -> None:
    me = os.getpid()
    assert base_of(me, -100) == os.getcwd()
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert base_of(me, d) == str(tmp_path)
    finally:
        os.close(d)


def test_open_path_follows_magic_links_as_the_caller(tmp_path: Path) -> None:
    from moray.micro.resolve import open_path

    me = os.getpid()
    proc_dev = os.stat("/proc").st_dev
    (tmp_path / "f").write_text("x")
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in (f"/proc/{me}/fd/{d}/f", f"/proc/{me}/fd/{d}/../{tmp_path.name}/f"):
            fd = open_path(path, None, 0, me, me, lambda n: False, proc_dev)
            try:
                assert os.fstat(fd).st_ino == (tmp_path / "f").stat().st_ino, path
            finally:
                os.close(fd)
        # no magic link: the kernel resolves it (RESOLVE_NO_MAGICLINKS)
        fd = open_path(str(tmp_path / "f"), None, os.O_NOFOLLOW, me, me, lambda n: False,
                       proc_dev)
        os.close(fd)
    finally:
        os.close(d)


def test_open_path_refuses_a_forbidden_entry_whatever_the_name(tmp_path: Path) -> None:
    import pytest

    from moray.micro.resolve import ForbiddenEntry, open_path

    me = os.getpid()
    proc_dev = os.stat("/proc").st_dev
    (tmp_path / "l").symlink_to(f"/proc/{me}/fd")
    (tmp_path / "p").symlink_to("/proc")
    r, w = os.pipe()
    try:
        for path in (f"/proc/{me}/fd/{w}", f"{tmp_path}/l/{w}", f"{tmp_path}/p/{me}/fd/{w}",
                     f"{tmp_path}/p/self/fd/{w}"):
            with pytest.raises(ForbiddenEntry):
                open_path(path, None, 0, me, me, lambda n: n == me, proc_dev)
    finally:
        os.close(r)
        os.close(w)
