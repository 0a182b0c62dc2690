"""What was lost, per event type and where: the `loss` event and the figures behind
moray_events_lost_total{type,where}.

Two places lose records under a storm: the kernel's ring buffer when it is full
(where="ring": per-CPU counters in mr_stats, indexed MR_STAT_DROP_BASE + opcode, written by
bpf/lib/common.h emit_flags) and the user-space queue when it is full (where="queue":
agent/events/reader.py BatchQueue.dropped_by_type). Metrics read both at scrape time. The
`loss` event says the same in the event stream, so that a reader of the events alone knows
that some are missing: at most one per `interval` seconds (a token bucket of one), carrying
what was lost since the previous one; a loss that continues is reported again after the
interval, never once per dropped batch.

    {"type": "loss", "time", "node",
     "loss": {"since": ISO, "total": N, "lost": {"<type>": {"ring": N, "queue": N}}}}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Totals = dict[tuple[str, str], int]   # (type, where) -> lost since the agent started


def iso(wall_ns: int) -> str:
    s, frac = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(s)) + f"{frac:09d}Z"


class LossReporter:
    """Turns growing loss totals into rate-limited `loss` events. `check()` is called
    periodically (every second by the agent); it returns an event, or None when nothing
    new was lost or the last report is less than `interval` seconds old."""

    def __init__(self, totals: Callable[[], Totals], node: str, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], int] = time.time_ns) -> None:
        self.totals = totals
        self.node = node
        self.interval = interval
        self.clock = clock
        self.wall = wall
        self._reported: Totals = {}
        self._since = wall()
        self._last: float | None = None
        self.events = 0

    def check(self) -> dict[str, Any] | None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        cur = self.totals()
        delta = {k: n - self._reported.get(k, 0) for k, n in cur.items()
                 if n > self._reported.get(k, 0)}
        if not delta:
            return None
        lost: dict[str, dict[str, int]] = {}
        for (typ, where), n in sorted(delta.items()):
            lost.setdefault(typ, {"ring": 0, "queue": 0})[where] = n
        wall, total = self.wall(), sum(delta.values())
        ev = {"type": "loss", "time": iso(wall), "node": self.node,
              "loss": {"since": iso(self._since), "total": total, "lost": lost}}
        self._reported = dict(cur)
        self._since = wall
        self._last = now
        self.events += 1
        log.warning("events lost", extra={"lost": lost, "total": total})
        return ev
