"""CgroupIndex and the cgroup2 mount finder, on a fake cgroup tree and fake /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moray.agent.enrich.cgroups import CgroupIndex, find_cgroup2_mount, normalize

HYBRID = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = """\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
NESTED = """\
900 800 0:30 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw
901 800 0:30 / /host/sys/fs\\040cgroup rw - cgroup2 cgroup rw
"""


@pytest.mark.parametrize(("mountinfo", "expected"), [
    (HYBRID, "/sys/fs/cgroup/unified"),
    (UNIFIED, "/sys/fs/cgroup"),
    (NESTED, "/host/sys/fs cgroup"),  # the whole hierarchy beats a namespaced subtree
    ("", None),
])
def test_find_cgroup2_mount(tmp_path: Path, mountinfo: str, expected: str | None) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(mountinfo)
    assert find_cgroup2_mount(str(tmp_path)) == expected


def test_find_cgroup2_mount_no_proc(tmp_path: Path) -> None:
    assert find_cgroup2_mount(str(tmp_path)) is None


def test_normalize() -> None:
    assert normalize("docker/x/") == "/docker/x"
    assert normalize("/") == "/"
    assert normalize("") == "/"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    for rel in ("docker/" + "a" * 64, "system.slice/sshd.service", "moray-fixture/sub"):
        (root / rel).mkdir(parents=True)
    (root / "cgroup.procs").write_text("")  # files are not cgroups
    return root


def ino(root: Path, rel: str = "") -> int:
    return os.stat(root / rel).st_ino


def test_scan(tree: Path) -> None:
    index = CgroupIndex(str(tree))
    assert index.scan() == 7  # root + 6 directories
    assert index.path(ino(tree)) == "/"
    assert index.path(ino(tree, "docker/" + "a" * 64)) == "/docker/" + "a" * 64
    assert index.path(ino(tree, "moray-fixture/sub")) == "/moray-fixture/sub"
    assert index.path(ino(tree, "cgroup.procs")) is None


def test_add_remove(tree: Path) -> None:
    index = CgroupIndex(str(tree))
    index.add(12345, "kubepods/x/")
    assert index.path(12345) == "/kubepods/x"
    assert index.remove(12345) == "/kubepods/x"
    assert index.remove(12345) is None
    assert len(index) == 0


def test_bounded(tree: Path) -> None:
    index = CgroupIndex(str(tree), max_entries=3)
    assert index.scan() == 3 and index.overflows == 1
    index.add(1, "/a")
    assert index.path(1) is None and index.overflows == 2


def _proc(tmp_path: Path, pid: int, cgroup_line: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(f"4:memory:/x\n{cgroup_line}\n")
    return proc


def test_resolve_from_proc(tree: Path, tmp_path: Path) -> None:
    now = [0.0]
    proc = _proc(tmp_path, 7, "0::/system.slice/sshd.service")
    index = CgroupIndex(str(tree), str(proc), clock=lambda: now[0])
    index.scan()
    (tree / "system.slice" / "new.scope").mkdir()  # created after the scan, event lost
    target = ino(tree, "system.slice/sshd.service")
    index.remove(target)
    assert index.resolve(target, 7) == "/system.slice/sshd.service"
    assert index.rescans == 1  # found through /proc, no rescan
    # pid in another cgroup than the event says: /proc is rejected, rescan finds it
    now[0] = 5.0
    new = ino(tree, "system.slice/new.scope")
    assert index.resolve(new, 7) == "/system.slice/new.scope"
    assert index.rescans == 2


def test_resolve_rescan_rate_limited(tree: Path, tmp_path: Path) -> None:
    now = [0.0]
    index = CgroupIndex(str(tree), str(tmp_path / "noproc"), rescan_interval=1.0,
                        clock=lambda: now[0])
    index.scan()
    (tree / "late").mkdir()
    late = ino(tree, "late")
    assert index.resolve(late, 99) is None  # pid gone, rescan too recent
    now[0] = 1.5
    assert index.resolve(late, 99) == "/late"
    assert index.resolve(424242) is None
    assert index.rescans == 2


def test_cgroupns_relative_proc_path_rejected(tree: Path, tmp_path: Path) -> None:
    """/proc/<pid>/cgroup relative to another cgroupns: inode check rejects it."""
    proc = _proc(tmp_path, 8, "0::/sub")
    index = CgroupIndex(str(tree), str(proc))
    index.scan()
    target = ino(tree, "moray-fixture/sub")
    index.remove(target)
    index._last_scan = None  # allow the rescan
    assert index.resolve(target, 8) == "/moray-fixture/sub"
