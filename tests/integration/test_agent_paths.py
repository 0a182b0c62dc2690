"""Relative opens through the kernel's directory cache (bpf/progs/file.bpf.c, pathgen.bpf.c):
an unwatched directory is decided without a path walk, and no way of reaching a watched
file by a relative name escapes it: chdir, fchdir, a dirfd, symlinks, "..", a watched file
beside unwatched ones, a rename of a cached directory into the watched set, a bind mount.
A rename through io_uring too. Real agent, real processes. Root only; run under the
integration lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import REPO, AgentProcess, Event

HELPERS = Path(__file__).resolve().parents[1] / "helpers"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("paths", numbered=True)
    (r / "w").mkdir()
    (r / "u" / "sub").mkdir(parents=True)
    (r / "w" / "f").write_text("watched")
    (r / "u" / "plain").write_text("unwatched")
    (r / "solo.sock").write_text("a watched file among unwatched ones")
    (r / "other").write_text("unwatched")
    return r


@pytest.fixture(scope="module")
def agent(root: Path) -> Iterator[AgentProcess]:
    # PYTHONPATH: the kernel matrix's guest has the venv's moray-agent script but not the
    # editable install it points to
    with AgentProcess(["--no-containers", "--watch", f"{root}/w/",
                       "--watch", f"{root}/solo.sock"], env={"PYTHONPATH": str(REPO)}) as a:
        yield a


def run(code: str, cwd: Path) -> int:
    """Run code in a fresh python in cwd; returns its pid."""
    p = subprocess.run([sys.executable, "-c", "import os, sys\n" + textwrap.dedent(code) +
                        "\nprint(os.getpid())"], cwd=cwd, capture_output=True, text=True,
                       timeout=30, check=True)
    return int(p.stdout.split()[-1])


def opened(agent: AgentProcess, path: Path, pid: int, n: int = 1) -> list[Event]:
    def match(e: Event) -> bool:
        return (e["type"] == "open" and e["file"]["path"] == str(path)
                and e["process"]["pid"] == pid)

    agent.events.wait_for(match, what=f"open of {path} by {pid}")
    if n > 1:  # wait for all n (identical ones come as a summary: bpf/progs/agg.bpf.c)
        import time
        deadline = time.monotonic() + 10
        while total(agent.events.all(match)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            agent.events.poll()
    return agent.events.all(match)


def total(events: list[Event]) -> int:
    """The opens events stand for: a summary of repeats (`repeat`) for its count."""
    return sum(e["repeat"]["count"] if "repeat" in e else 1 for e in events)


def hits(agent: AgentProcess) -> float:
    return agent.metrics().get('moray_dircache_lookups_total{result="hit"}', 0.0)


def test_unwatched_relative_opens_are_decided_by_the_cache(agent: AgentProcess,
                                                           root: Path) -> None:
    before = hits(agent)
    pid = run("for _ in range(50): open('plain').close()", root / "u")
    assert hits(agent) - before >= 40  # the first walks, the rest hit (the pid's own)
    assert agent.events.all(lambda e: e["type"] == "open" and e["process"]["pid"] == pid
                            and e["file"]["path"].startswith(str(root))) == []


def test_relative_opens_in_a_watched_directory_are_each_reported(agent: AgentProcess,
                                                                 root: Path) -> None:
    pid = run("for _ in range(3): open('f').close()", root / "w")
    assert total(opened(agent, root / "w" / "f", pid, 3)) == 3


def test_fchdir_dirfd_symlink_and_dotdot(agent: AgentProcess, root: Path) -> None:
    (root / "u" / "lnk").symlink_to(root / "w")
    (root / "u" / "lf").symlink_to(root / "w" / "f")
    code = f"""
    for _ in range(5): open('plain').close()          # u/ cached as unwatched
    fd = os.open({str(root / 'w')!r}, os.O_RDONLY)
    os.close(os.open('f', os.O_RDONLY, dir_fd=fd))      # openat(dirfd of w/, "f")
    open('lnk/f').close()                               # through a symlinked directory
    open('lf').close()                                  # a symlink to the file
    os.chdir('sub'); open('../../w/f').close()           # ".." out of u/sub
    os.fchdir(fd); open('f').close()                     # fchdir into w/
    """
    pid = run(code, root / "u")
    assert total(opened(agent, root / "w" / "f", pid, 5)) == 5


def test_a_watched_file_beside_unwatched_ones(agent: AgentProcess, root: Path) -> None:
    # root/ holds no watched directory, but root/solo.sock is watched (mr_watch_anc)
    pid = run("for _ in range(5): open('other').close()\nopen('solo.sock').close()", root)
    opened(agent, root / "solo.sock", pid)


def test_an_ancestor_of_a_cached_directory_renamed_into_the_watched_set(
        agent: AgentProcess, root: Path) -> None:
    # the cached directory itself keeps its name and parent: only the generation (the
    # rename's bump) says that its path changed
    top, d = root / "u" / "anc", root / "u" / "anc" / "inner"
    d.mkdir(parents=True)
    (d / "g").write_text("x")
    moved = root / "w" / "anc"
    before = hits(agent)
    code = f"""
    for _ in range(10): open('g').close()               # cached: unwatched
    os.rename({str(top)!r}, {str(moved)!r})               # the cwd moves with it
    open('g').close()
    os.rename({str(moved)!r}, {str(top)!r})
    """
    pid = run(code, d)
    assert hits(agent) - before >= 5  # the cache was in use before the rename
    opened(agent, moved / "inner" / "g", pid)
    assert agent.events.all(lambda e: e["type"] == "open" and e["process"]["pid"] == pid
                            and e["file"]["path"] == str(d / "g")) == []


def test_a_cached_directory_bind_mounted_into_the_watched_set(agent: AgentProcess,
                                                              root: Path) -> None:
    src = root / "u" / "bsrc"
    src.mkdir()
    (src / "h").write_text("x")
    dst = root / "w" / "bdst"
    dst.mkdir()
    code = f"""
    import subprocess
    for _ in range(10): open('h').close()               # cached: unwatched
    subprocess.run(['mount', '--bind', {str(src)!r}, {str(dst)!r}], check=True)
    try:
        os.chdir({str(dst)!r}); open('h').close()
    finally:
        os.chdir('/'); subprocess.run(['umount', {str(dst)!r}], check=True)
    """
    pid = run(code, src)
    opened(agent, dst / "h", pid)


def test_an_ancestor_renamed_through_io_uring(agent: AgentProcess, root: Path) -> None:
    # no syscall tracepoint sees this rename: the io_uring submission and completion do
    top, d = root / "u" / "uanc", root / "u" / "uanc" / "inner"
    d.mkdir(parents=True)
    (d / "g").write_text("x")
    moved = root / "w" / "uanc"
    helper = [sys.executable, str(HELPERS / "uring_rename.py"), str(top), str(moved)]
    code = f"""
    import subprocess
    for _ in range(10): open('g').close()               # cached: unwatched
    rc = subprocess.run({helper!r}, stdout=subprocess.DEVNULL).returncode
    if rc == 0:
        open('g').close()
        os.rename({str(moved)!r}, {str(top)!r})
    print(rc)
    """
    p = subprocess.run([sys.executable, "-c", "import os\n" + textwrap.dedent(code) +
                        "\nprint(os.getpid())"], cwd=d, capture_output=True, text=True,
                       timeout=30, check=True)
    rc, pid = (int(x) for x in p.stdout.split()[-2:])
    if rc == 77:
        pytest.skip("io_uring (or its RENAMEAT) is not available here")
    assert rc == 0
    opened(agent, moved / "inner" / "g", pid)
