"""Process tree against a fake /proc and synthetic events: ids across pid reuse, fork and
exec, exits freed into a bounded LRU, misses, and memory bounded under pid churn."""

from __future__ import annotations

from pathlib import Path

from moray.agent.enrich.proctree import NS_PER_TICK, Process, ProcessTree, exec_id, ticks
from moray.agent.events.types import EventType, ExecEvent, Proc


def write_stat(proc: Path, pid: int, start_ticks: int, comm: str = "x y) z") -> None:
    d = proc / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    fields = ["S", "1"] + ["0"] * 17 + [str(start_ticks)] + ["0"] * 20
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")


def fake_reader(table: dict[int, tuple[int, int, str]]):  # type: ignore[no-untyped-def]
    def read(proc: str, pid: int) -> Process | None:
        if pid not in table:
            return None
        ppid, st, binary = table[pid]
        return Process(exec_id(pid, st), pid, st, ppid, None, binary, (binary,), "/", 0, 0, 0,
                       0, Path(binary).name)
    return read


def kproc(pid: int, start_ticks: int, ppid: int = 1, pstart_ticks: int = 1,
          comm: str = "c") -> Proc:
    return Proc(pid, pid, ppid, 0, 0, 0, 1, 1, start_ticks * NS_PER_TICK,
                pstart_ticks * NS_PER_TICK, comm)


def exec_ev(p: Proc, binary: str, *args: str) -> ExecEvent:
    return ExecEvent(1, p, binary, binary, (binary, *args), 1 + len(args), False, "/w", False,
                     EventType.EXEC)


def test_scan_proc_links_parents(tmp_path: Path) -> None:
    for pid, st in ((1, 1), (100, 50), (200, 60)):
        write_stat(tmp_path, pid, st)
    table = {1: (0, 1, "/sbin/init"), 100: (1, 50, "/bin/bash"), 200: (100, 60, "/bin/sleep")}
    t = ProcessTree(str(tmp_path), read_proc=fake_reader(table))
    assert t.scan_proc() == 3
    sleep = t.get("200:60")
    assert sleep is not None and sleep.parent_exec_id == "100:50"
    # an event for a pre-existing process finds it by the same id the kernel gives
    assert t.ensure(kproc(200, 60, 100, 50)).binary == "/bin/sleep"
    assert t.parent_of(kproc(200, 60, 100, 50)).binary == "/bin/bash"  # type: ignore[union-attr]


def test_exec_id_survives_pid_reuse(tmp_path: Path) -> None:
    t = ProcessTree(str(tmp_path), read_proc=fake_reader({}))
    a = t.on_fork(kproc(500, 10))
    t.on_exit(kproc(500, 10))
    b = t.on_fork(kproc(500, 99))
    assert a.exec_id != b.exec_id
    assert t.get(a.exec_id) is a and a.exited
    assert t.get(b.exec_id) is b and not b.exited


def test_fork_inherits_then_exec_replaces(tmp_path: Path) -> None:
    t = ProcessTree(str(tmp_path), read_proc=fake_reader({}))
    parent = kproc(10, 5)
    t.on_exec(exec_ev(parent, "/bin/sh", "-c", "cat x"))
    child = kproc(11, 7, ppid=10, pstart_ticks=5)
    c = t.on_fork(child)
    assert c.binary == "/bin/sh" and c.parent_exec_id == "10:5"
    t.on_exec(exec_ev(child, "/bin/cat", "x"))
    assert t.get("11:7").binary == "/bin/cat"  # type: ignore[union-attr]
    assert t.parent_of(child).binary == "/bin/sh"  # type: ignore[union-attr]


def test_exited_parent_still_named_for_late_events(tmp_path: Path) -> None:
    t = ProcessTree(str(tmp_path), read_proc=fake_reader({}))
    parent = kproc(10, 5)
    t.on_exec(exec_ev(parent, "/bin/sh"))
    child = kproc(11, 7, ppid=10, pstart_ticks=5)
    t.on_fork(child)
    t.on_exit(parent)  # parent exits first; the child's events arrive later
    assert t.parent_of(child).binary == "/bin/sh"  # type: ignore[union-attr]


def test_miss_builds_entry_from_event(tmp_path: Path) -> None:
    t = ProcessTree(str(tmp_path), read_proc=fake_reader({}))
    p = t.ensure(kproc(77, 3, ppid=10, pstart_ticks=5, comm="ghost"))
    assert p.binary == "[ghost]" and p.parent_exec_id == "10:5" and t.misses == 1


def test_miss_reads_proc_when_start_time_matches(tmp_path: Path) -> None:
    write_stat(tmp_path, 77, 3)
    t = ProcessTree(str(tmp_path), read_proc=fake_reader({77: (10, 3, "/usr/bin/real")}))
    assert t.ensure(kproc(77, 3, ppid=10, pstart_ticks=5)).binary == "/usr/bin/real"
    # a reused pid (different start time) is not mistaken for the /proc entry
    assert t.ensure(kproc(77, 4)).binary == "[c]"


def test_memory_bounded_under_pid_churn(tmp_path: Path) -> None:
    t = ProcessTree(str(tmp_path), exited_keep=1000, read_proc=fake_reader({}))
    for i in range(100_000):
        p = kproc(1000 + i % 30000, 10 + i)
        t.on_fork(p)
        t.on_exec(exec_ev(p, "/bin/true"))
        t.on_exit(p)
    assert len(t.live) == 0 and len(t.exited) == 1000


def test_lost_exits_are_reaped(tmp_path: Path) -> None:
    t = ProcessTree(str(tmp_path), max_live=100, read_proc=fake_reader({}))
    for i in range(150):  # none of these exist in the fake /proc
        t.on_fork(kproc(2000 + i, 5 + i))
    assert len(t.live) <= 100


def test_ticks_match_proc_units() -> None:
    assert ticks(12 * NS_PER_TICK + NS_PER_TICK - 1) == 12
