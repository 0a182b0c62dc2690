"""The kernel's aggregation of repeated opens (bpf/progs/agg.bpf.c, agent/events/aggregate.py):
a key's first open comes out in full, its repeats as summaries whose counts add up to
exactly what was done; a different process, flags or result is its own key; the sweeper
writes the summary of a key gone quiet. One real agent for the module; root only; under
the lock (tests/integration: anything that loads BPF programs)."""

from __future__ import annotations

import os
import subprocess
import sys
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
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    d = tmp_path_factory.mktemp("agg") / "w"
    d.mkdir()
    (d / "a").write_text("a")
    (d / "b").write_text("b")
    with AgentProcess(["--no-containers", "--no-default-watch", "--watch", f"{d}/"],
                      env={"PYTHONPATH": str(REPO)}) as agent:
        yield agent, d


def opener(script: str) -> subprocess.Popen[str]:
    """A Python process running `script` (os imported); it prints its pid first."""
    return subprocess.Popen([sys.executable, "-c", "import os, sys\nprint(os.getpid(), "
                             "flush=True)\n" + script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run(script: str) -> int:
    p = opener(script)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    return int(out.split()[0])


def opens(agent: AgentProcess, pid: int, path: Path) -> list[Event]:
    return agent.events.all(lambda e: e["type"] == "open" and e["process"]["pid"] == pid
                            and e["file"]["path"] == str(path))


def total(events: list[Event]) -> int:
    """Opens the events stand for: 1 for a full one, repeat.count for a summary."""
    return sum(e["repeat"]["count"] if "repeat" in e else 1 for e in events)


def wait_total(agent: AgentProcess, pid: int, path: Path, want: int,
               pred: object = None, timeout: float = 20) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        agent.events.poll()
        evs = [e for e in opens(agent, pid, path) if pred is None or pred(e)]  # type: ignore[operator]
        if total(evs) >= want or time.monotonic() > deadline:
            return evs
        time.sleep(0.1)


def test_identical_opens_are_one_full_event_and_summaries_that_add_up(
        watched: tuple[AgentProcess, Path]) -> None:
    agent, d = watched
    n = 5000
    pid = run(f"for _ in range({n}): os.close(os.open({str(d / 'a')!r}, os.O_RDONLY))")
    evs = wait_total(agent, pid, d / "a", n)
    assert total(evs) == n, [e.get("repeat") for e in evs]
    full = [e for e in evs if "repeat" not in e]
    summaries = [e for e in evs if "repeat" in e]
    assert full and summaries, evs
    assert len(evs) < n // 10  # aggregated, not one event per open
    # the first event is the full one; a summary names its span, first <= last
    assert "repeat" not in evs[0]
    for s in summaries:
        assert s["repeat"]["count"] > 0 and s["repeat"]["first"] <= s["repeat"]["last"]
        assert s["file"] == full[0]["file"] and s["process"]["pid"] == pid
    assert agent.metrics()['moray_events_aggregated_total{type="open"}'] >= n - len(full)


def test_a_different_process_flags_or_result_is_its_own_event(
        watched: tuple[AgentProcess, Path]) -> None:
    agent, d = watched
    a, b, missing = str(d / "a"), str(d / "b"), str(d / "missing")
    n = 300
    pid = run(f"for _ in range({n}):\n"
              f"    os.close(os.open({a!r}, os.O_RDONLY))\n"
              f"    os.close(os.open({a!r}, os.O_RDWR))\n"
              f"    os.close(os.open({b!r}, os.O_RDONLY))\n"
              f"    try: os.open({missing!r}, os.O_RDONLY)\n"
              f"    except FileNotFoundError: pass\n")
    pid2 = run(f"for _ in range({n}): os.close(os.open({a!r}, os.O_RDONLY))")
    keys = {
        "a read": (pid, d / "a", lambda e: e["file"]["access"] == "read"),
        "a read-write": (pid, d / "a", lambda e: e["file"]["access"] == "read-write"),
        "b": (pid, d / "b", None),
        "missing": (pid, d / "missing", lambda e: e["file"]["error"] == "ENOENT"),
        "other process": (pid2, d / "a", None),
    }
    for what, (p, path, pred) in keys.items():
        evs = wait_total(agent, p, path, n, pred)
        # every key has its own first event in full, and its count is exact
        assert total(evs) == n, (what, [e.get("repeat") for e in evs])
        assert any("repeat" not in e for e in evs), what
    # a failed open is never merged with a succeeding one of the same path
    ok = [e for e in opens(agent, pid, d / "missing") if e["file"]["error"] is None]
    assert ok == []


def test_the_sweeper_writes_the_summary_of_a_quiet_key(
        watched: tuple[AgentProcess, Path]) -> None:
    agent, d = watched
    n = 200
    # the opener makes its opens, then waits (alive, quiet) until we have seen them all:
    # only the sweeper can have written the summary of its last window
    p = opener(f"for _ in range({n}): os.close(os.open({str(d / 'b')!r}, os.O_RDONLY))\n"
               "sys.stdin.readline()")
    assert p.stdout is not None
    pid = int(p.stdout.readline())
    try:
        evs = wait_total(agent, pid, d / "b", n)
        assert total(evs) == n, [e.get("repeat") for e in evs]
        assert any("repeat" in e for e in evs)
    finally:
        p.communicate("\n", timeout=10)


def test_no_aggregate_writes_every_open(tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    (d / "a").write_text("a")
    n = 500
    with AgentProcess(["--no-containers", "--no-default-watch", "--watch", f"{d}/",
                       "--no-aggregate"], env={"PYTHONPATH": str(REPO)}) as agent:
        pid = run(f"for _ in range({n}): os.close(os.open({str(d / 'a')!r}, os.O_RDONLY))")
        evs = wait_total(agent, pid, d / "a", n)
        assert len(evs) == n and not any("repeat" in e for e in evs)


def test_an_open_inside_another_process_storm_comes_out_in_full(
        watched: tuple[AgentProcess, Path]) -> None:
    """A distinct open hidden in a storm of identical ones is its own key: out at once,
    in full (not only as a count)."""
    agent, d = watched
    a = str(d / "a")
    storm = opener(f"import time\nend = time.monotonic() + 1.5\nn = 0\n"
                   f"while time.monotonic() < end:\n"
                   f"    os.close(os.open({a!r}, os.O_RDONLY)); n += 1\nprint(n)")
    assert storm.stdout is not None
    spid = int(storm.stdout.readline())
    pid = run(f"os.close(os.open({a!r}, os.O_RDONLY))")
    n = int(storm.communicate(timeout=30)[0].split()[0])
    evs = wait_total(agent, pid, d / "a", 1)
    assert [("repeat" in e) for e in evs] == [False]
    assert total(wait_total(agent, spid, d / "a", n)) == n


def test_a_rename_between_opens_is_a_new_key(watched: tuple[AgentProcess, Path]) -> None:
    agent, d = watched
    src, dst = d / "r1", d / "r2"
    src.write_text("r")
    n = 100
    pid = run(f"for _ in range({n}): os.close(os.open({str(src)!r}, os.O_RDONLY))\n"
              f"os.rename({str(src)!r}, {str(dst)!r})\n"
              f"for _ in range({n}): os.close(os.open({str(dst)!r}, os.O_RDONLY))")
    for path in (src, dst):
        evs = wait_total(agent, pid, path, n)
        assert total(evs) == n and "repeat" not in evs[0], path
