"""The agent's side of the kernel's aggregation of repeated events (bpf/progs/agg.bpf.c).

The kernel writes a key's first event in full and counts its repeats in mr_agg (a key's
first event after its window is written in full again). What this module owns, in its own
thread (`Sweeper.run`):

- every `interval` (0.25 s): run mr_agg_sweep, the kernel's sweeper, which writes the
  summaries (open events with `repeat`) of keys whose first pending repeat is a window
  old. The task adds to a count atomically and the sweeper takes it by atomic exchange, so
  a repeat is in exactly one summary; user space never writes a count.
- every `reclaim_every` (5 s): delete the entries of tasks that have exited, once their
  count is 0 (their summary written). Only a key's own task adds to it, and a task that has
  exited runs no open again, so the delete races nothing; an entry of a live task is never
  deleted (that would race its next open). A task is gone when /proc/<pid>/task/<tid> is,
  or its process's start time is another's (pid reuse).
- at stop (`stop`): one sweep with force, every pending count whatever its window.

`--no-aggregate` (agent/cli.py) loads the programs with the window 0: nothing is counted,
every event is written, and no Sweeper runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from moray.agent.bpf import abi
from moray.agent.bpf.loader import BpfMap
from moray.agent.enrich.proctree import ticks

log = logging.getLogger(__name__)

SWEEP_PROGRAM = "mr_agg_sweep"
MAP = "mr_agg"
_FORCE = (1).to_bytes(4, "little") + bytes(4)   # struct mr_sweep_ctx
_NORMAL = bytes(8)
_PID = abi.AGG_KEY.offsets["proc"] + abi.PROC.offsets["pid"]
_TID = abi.AGG_KEY.offsets["proc"] + abi.PROC.offsets["tid"]
_START = abi.AGG_KEY.offsets["proc"] + abi.PROC.offsets["start_ns"]
_COUNT = abi.AGG_VAL.offsets["count"]


class Runner(Protocol):
    """agent/bpf/loader.py BpfObject: runs a loaded syscall program, opens a map."""

    def run(self, name: str, ctx: bytes = b"") -> int: ...

    def map(self, name: str) -> BpfMap: ...


def _u(raw: bytes, off: int, n: int) -> int:
    return int.from_bytes(raw[off:off + n], "little")


class Sweeper:
    def __init__(self, obj: Runner, proc: str = "/proc", interval: float = 0.25,
                 reclaim_every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.obj = obj
        self.proc = proc
        self.interval = interval
        self.reclaim_every = reclaim_every
        self.clock = clock
        self.sweeps = 0
        self.summaries = 0   # written by the sweeper (the tasks' own are not counted here)
        self.reclaimed = 0
        self.errors = 0
        self._map: BpfMap | None = None
        self._lock = threading.Lock()  # sweep and reclaim never run at once

    def sweep(self, force: bool = False) -> int:
        """Run the kernel's sweeper once; the summaries it wrote."""
        with self._lock:
            n = self.obj.run(SWEEP_PROGRAM, _FORCE if force else _NORMAL)
        self.sweeps += 1
        self.summaries += n
        return n

    def _alive(self, pid: int, tid: int, start_ns: int, starts: dict[int, int | None]) -> bool:
        if not os.path.exists(f"{self.proc}/{pid}/task/{tid}"):
            return False
        if pid not in starts:
            try:
                with open(f"{self.proc}/{pid}/stat", "rb") as f:
                    # the fields after the comm's closing parenthesis; starttime is 22nd
                    starts[pid] = int(f.read().rsplit(b")", 1)[1].split()[19])
            except (OSError, ValueError, IndexError):
                starts[pid] = None
        start = starts[pid]
        return start is None or start == ticks(start_ns)  # unreadable: keep it

    def reclaim(self) -> int:
        """Delete the entries of exited tasks whose count is 0; how many."""
        if self._map is None:
            self._map = self.obj.map(MAP)
        m = self._map
        starts: dict[int, int | None] = {}
        n = 0
        with self._lock:
            for key in list(m.keys()):
                if self._alive(_u(key, _PID, 4), _u(key, _TID, 4), _u(key, _START, 8),
                               starts):
                    continue
                val = m.lookup(key)
                if val is None or _u(val, _COUNT, 8):
                    continue  # its summary is not written yet: the next sweep writes it
                if m.delete(key):
                    n += 1
        self.reclaimed += n
        return n

    def run(self, stop: threading.Event) -> None:
        next_reclaim = self.clock() + self.reclaim_every
        while not stop.wait(self.interval):
            try:
                self.sweep()
                if self.clock() >= next_reclaim:
                    next_reclaim = self.clock() + self.reclaim_every
                    self.reclaim()
            except OSError as err:  # counted and logged; the next round tries again
                self.errors += 1
                if self.errors <= 10:
                    log.warning("aggregation sweep failed: %s", err)

    def stop(self) -> None:
        """The last sweep: every pending count, windows open or not."""
        try:
            self.sweep(force=True)
        except OSError as err:
            log.warning("final aggregation sweep failed: %s", err)
