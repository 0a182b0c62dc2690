"""Stage 1, decode: a queued record -> a typed kernel event, or None.

Kernel records are bytes (agent/events/decode.py `DECODERS[op]`). Events made in user
space (a held exec's decision, agent/policy/hold.py) are queued typed, in batches of
their own (a tuple, agent/events/reader.py `Batch`), and pass through `typed`. Cgroup mkdir/rmdir
records update the container resolver here and go no further. An undecodable record is
counted in `Stats.decode_errors` (the first ten are logged) and dropped.
"""

from __future__ import annotations

import logging

from moray.agent.events.decode import DecodeError, decode
from moray.agent.events.types import CgroupEvent, EnforceEvent, KernelEvent
from moray.agent.output.metrics import Stats
from moray.agent.pipeline.identity import Resolver

log = logging.getLogger(__name__)


class Decode:
    def __init__(self, resolver: Resolver | None, stats: Stats) -> None:
        self.resolver = resolver
        self.stats = stats

    def record(self, rec: bytes) -> KernelEvent | None:
        try:
            ev = decode(rec)
        except (DecodeError, ValueError, IndexError) as err:
            self.stats.decode_errors += 1
            if self.stats.decode_errors <= 10:
                log.warning("undecodable record: %s", err)
            return None
        if isinstance(ev, CgroupEvent):
            if self.resolver is not None:
                if ev.created:
                    self.resolver.on_cgroup_created(ev.id, ev.path)
                else:
                    self.resolver.on_cgroup_removed(ev.id)
            return None
        return ev


def typed(ev: EnforceEvent) -> KernelEvent:
    """A typed event from user space: nothing to decode."""
    return ev


def describe(rec: bytes | EnforceEvent) -> str:
    """A queued record, for a log line."""
    if isinstance(rec, bytes):
        return f"record {len(rec)} bytes op {int.from_bytes(rec[:2], 'little')}"
    return f"{type(rec).__name__} pid {rec.proc.pid}"
