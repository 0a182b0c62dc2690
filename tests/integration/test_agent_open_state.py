"""The state a file open keeps between its sys_enter and its sys_exit (bpf/progs/file.bpf.c
`inflight_put` / `inflight_take`): in the task's own storage where the kernel allows it
(probed; 6.1 and 6.18 do), else in a hash by thread id (and with `--no-task-storage`).
Each test runs under both. What could go wrong with per-task state: a thread opening while
another thread of the process changes the shared cwd, a thread that execs (it becomes the
process's leader and keeps its task), an open whose enter kept nothing followed by one that
kept something.
Real agent, real processes. Root only; run under the integration lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import REPO, AgentProcess, Event

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("openstate", numbered=True)
    for d in ("w", "u"):
        (r / d).mkdir()
        (r / d / "f").write_text(d)
    return r


@pytest.fixture(scope="module", params=["task-storage", "hash"])
def agent(request: pytest.FixtureRequest, root: Path) -> Iterator[AgentProcess]:
    # every open reported in full (these tests count opens; repeats would be summaries)
    extra = ["--no-aggregate", *(["--no-task-storage"] if request.param == "hash" else [])]
    with AgentProcess(["--no-containers", "--watch", f"{root}/w/", *extra],
                      env={"PYTHONPATH": str(REPO)}) as a:
        want = "a hash by thread id" if request.param == "hash" else "task storage"
        if request.param == "task-storage" and want not in a.log():
            pytest.skip("this kernel offers no task storage to syscall tracepoints")
        assert f"file opens in flight kept in {want}" in a.log()
        yield a


def run(code: str, cwd: Path) -> tuple[int, str]:
    """Run code in a fresh python in cwd; returns its pid and its output."""
    p = subprocess.run([sys.executable, "-c", "import os, sys\n" + textwrap.dedent(code)],
                       cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    return int(p.stdout.split()[0]), p.stdout


def opens(agent: AgentProcess, path: str, pid: int, n: int) -> list[Event]:
    """The open events of path by pid, once n of them arrived (or 10 s passed)."""
    def match(e: Event) -> bool:
        return (e["type"] == "open" and e["file"]["path"] == path
                and e["process"]["pid"] == pid)

    if n:
        agent.events.wait_for(match, what=f"open of {path} by {pid}")
    deadline = time.monotonic() + 10
    while len(agent.events.all(match)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return agent.events.all(match)


def test_a_thread_opens_while_another_changes_the_cwd(agent: AgentProcess, root: Path) -> None:
    # both directories hold "f"; which one each open reached is read back from its fd
    code = f"""
    import threading
    sys.setswitchinterval(1e-6)  # hand the GIL over between nearly every two calls
    stop = False
    def hop():
        while not stop:
            os.chdir({str(root / 'w')!r}); os.chdir({str(root / 'u')!r})
    t = threading.Thread(target=hop); t.start()
    watched = n = 0
    # on a loaded machine the other thread may not run for a while: go on (up to 20,000
    # opens) until both directories were reached
    while n < 1000 or (watched in (0, n) and n < 20000):
        fd = os.open('f', os.O_RDONLY)
        n += 1
        if os.readlink(f'/proc/self/fd/{{fd}}') == {str(root / 'w' / 'f')!r}:
            watched += 1
        os.close(fd)
    stop = True; t.join()
    print(os.getpid(), watched, n)
    """
    pid, out = run(code, root / "u")
    watched, n = int(out.split()[1]), int(out.split()[2])
    assert 0 < watched < n, "the threads did not interleave; nothing was tested"
    assert len(opens(agent, str(root / "w" / "f"), pid, watched)) == watched
    assert opens(agent, str(root / "u" / "f"), pid, 0) == []


def test_a_thread_that_execs_keeps_its_task(agent: AgentProcess, root: Path) -> None:
    # a second thread opens (its state made and cleared), then execs: it becomes the
    # leader under the process's pid. The new image's opens are each reported with their
    # own path: a relative one, a failed absolute one (the path as written, read from
    # the pointer its enter kept), and an unwatched one between them reports nothing.
    after = textwrap.dedent(f"""
    import os
    os.chdir({str(root / 'w')!r})
    open('f').close()
    try:
        open({str(root / 'w' / 'missing')!r})
    except FileNotFoundError:
        pass
    open({str(root / 'u' / 'f')!r}).close()
    open('f').close()
    """)
    code = f"""
    import threading
    print(os.getpid(), flush=True)
    def go():
        for _ in range(20):
            open('f').close()
        os.execv(sys.executable, [sys.executable, '-c', {after!r}])
    threading.Thread(target=go).start()
    threading.Event().wait()
    """
    pid, _ = run(code, root / "u")
    assert len(opens(agent, str(root / "w" / "f"), pid, 2)) == 2
    failed = opens(agent, str(root / "w" / "missing"), pid, 1)
    assert len(failed) == 1
    assert opens(agent, str(root / "u" / "f"), pid, 0) == []


def test_unwatched_opens_between_watched_ones(agent: AgentProcess, root: Path) -> None:
    # absolute unwatched opens keep nothing at enter; their exits must not find an earlier
    # open's state, and the watched ones around them are each reported once
    code = f"""
    for i in range(50):
        open({str(root / 'u' / 'f')!r}).close()
        if i % 10 == 0:
            open({str(root / 'w' / 'f')!r}).close()
    print(os.getpid())
    """
    pid, _ = run(code, root)
    assert len(opens(agent, str(root / "w" / "f"), pid, 5)) == 5
    assert opens(agent, str(root / "u" / "f"), pid, 0) == []
