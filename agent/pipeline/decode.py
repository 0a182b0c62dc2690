"""Stage 1, decode: a queued record -> a typed kernel event, or None.

Kernel records are bytes (agent/events/decode.py `DECODERS[op]`). A decision made in user
space on a held exec (agent/policy/hold.py) is queued typed (`Decision`), in a batch of
its own (a tuple, agent/events/reader.py `Batch`): `decision` makes it the event, naming
the paths of the kernel's HELD record of that exec when the pipeline saw it (`HeldExecs`,
filled by the format stage, which sees every enforcement event). Cgroup mkdir/rmdir
records update the container resolver here and go no further. An undecodable record is
counted in `Stats.decode_errors` (the first ten are logged) and dropped.
"""

from __future__ import annotations

import logging

from moray.agent.bpf import abi
from moray.agent.events.decode import DECODERS, DecodeError, decode
from moray.agent.events.types import CgroupEvent, Decision, EnforceEvent, KernelEvent
from moray.agent.output.metrics import Stats
from moray.agent.pipeline.identity import Resolver

log = logging.getLogger(__name__)


class HeldExecs:
    """pid -> (binary, filename) of the execs the kernel held (HELD records), until the
    decision on them; the oldest go first beyond `limit`. Pipeline thread only."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._paths: dict[int, tuple[str, str]] = {}

    def note(self, ev: EnforceEvent) -> None:
        if ev.action != abi.EAction.HELD:
            return
        self._paths[ev.proc.pid] = (ev.path, ev.path2)
        if len(self._paths) > self.limit:
            self._paths.pop(next(iter(self._paths)))

    def pop(self, pid: int) -> tuple[str, str] | None:
        return self._paths.pop(pid, None)


class Decode:
    def __init__(self, resolver: Resolver | None, stats: Stats) -> None:
        self.resolver = resolver
        self.stats = stats
        self.held = HeldExecs()

    def record(self, rec: bytes) -> KernelEvent | None:
        try:
            # decode() without its call: the opcode is the header's first u16; a record
            # too short for its decoder raises DecodeError (shorter than 2: IndexError)
            fn = DECODERS.get(rec[0] | rec[1] << 8)
            ev = decode(rec) if fn is None else fn(rec)
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


    def decision(self, d: Decision) -> KernelEvent:
        """A held exec's decision -> its event, with the HELD record's paths if seen."""
        ev = d.event
        paths = self.held.pop(ev.proc.pid)
        if paths is not None:
            ev = ev._replace(path=paths[0], path2=paths[1])
        return ev


def describe(rec: bytes | Decision) -> str:
    """A queued record, for a log line."""
    if isinstance(rec, bytes):
        return f"record {len(rec)} bytes op {int.from_bytes(rec[:2], 'little')}"
    return f"{type(rec).__name__} pid {rec.event.proc.pid}"
