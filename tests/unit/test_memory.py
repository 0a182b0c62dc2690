"""agent/output/memory.py: the agent's RSS figures and malloc_trim."""

from __future__ import annotations

from pathlib import Path

from moray.agent.output.memory import memory_mb, trim


def test_memory_mb_reads_rss_and_peak(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n")
    assert memory_mb(str(status)) == (10.0, 20.0)


def test_memory_mb_of_this_process() -> None:
    rss, hwm = memory_mb()
    assert 0 < rss <= hwm


def test_memory_mb_without_proc_is_zero(tmp_path: Path) -> None:
    assert memory_mb(str(tmp_path / "absent")) == (0.0, 0.0)


def test_trim_gives_freed_heap_back() -> None:
    blocks = [bytearray(200_000) for _ in range(100)]  # 20 MB, then freed
    del blocks
    assert isinstance(trim(), bool)
