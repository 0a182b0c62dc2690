"""`Pipeline`: the thread that runs every queued record through the stages.

    decode (decode.py) -> process tree (tree.py) -> container identity (identity.py)
      -> format (format.py) -> route (route.py); detect (agent/detect) -> route

An exception on one record (an enrichment or detection bug) is counted in
`Stats.enrich_errors` and logged (the first 10, then every 10,000th); the thread goes on.

A summary of repeated opens (an OpenEvent with `repeat`, bpf/progs/agg.bpf.c) is formatted
and routed like an open, counted in `Stats.aggregated`, and not given to detection (which
saw the first of those opens in full).

`fast_open=True`: open records take the compiled hot path (fastopen.py `OpenLines`: one
C call per open after the first of its process in a batch, the same bytes) when the
route takes encoded lines (`Router.line_writer`: the sink, and the spool when enrolled;
no export filter or export) and detection (if any) is a Detector's: an open whose file
no rule can match skips it; the others (and the first of each process view in a batch)
take the Python path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from moray.agent.detect.engine import Detector
from moray.agent.enrich.proctree import Process, ProcessTree
from moray.agent.events.reader import BatchQueue
from moray.agent.events.types import (
    Decision,
    EnforceEvent,
    ExecEvent,
    KernelEvent,
    LossReport,
    OpenEvent,
)
from moray.agent.output.jsonl import EventSink
from moray.agent.output.metrics import Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline.decode import Decode, describe
from moray.agent.pipeline.fastopen import OpenLines
from moray.agent.pipeline.format import Format
from moray.agent.pipeline.identity import Identity, Resolver
from moray.agent.pipeline.route import Router
from moray.agent.pipeline.tree import Lineage

log = logging.getLogger(__name__)

# the enriched event, its process and that process's parent (agent/detect/engine.py)
Detect = Callable[[dict[str, Any], Process, Process | None], list[dict[str, Any]]]


class Pipeline:
    def __init__(self, tree: ProcessTree, out: Router | EventSink, formatter: Formatter,
                 resolver: Resolver | None, stats: Stats, detect: Detect | None = None,
                 fast_open: bool = False) -> None:
        self.stats = stats
        self.decode = Decode(resolver, stats)
        self.lineage = Lineage(tree)
        self.identity = Identity(resolver, stats)
        self.format = Format(formatter, self.decode.held)
        # detect stage (agent/detect/stage.py): enriched event -> alerts
        self.detect = detect
        self.route = out if isinstance(out, Router) else Router(out)
        self.open_lines: OpenLines | None = None
        if fast_open and self.fast_open_ok():
            self.open_lines = OpenLines(self, detector=self._detector())

    def _detector(self) -> Detector | None:
        """The Detector behind `detect` (its method, or a DetectStage's), if it is one."""
        owner = getattr(self.detect, "__self__", None)
        det = getattr(owner, "detector", owner)
        return det if isinstance(det, Detector) else None

    def fast_open_ok(self) -> bool:
        """Whether open events can skip their dicts when nothing needs them: the route
        takes lines (Router.line_writer), and detection is a Detector's (one we cannot
        ask which opens its rules read: no)."""
        if self.route.line_writer("open") is None:
            return False
        return self.detect is None or self._detector() is not None

    def handle(self, rec: bytes | Decision) -> dict[str, Any] | None:
        """One queued record -> its JSON event (None: nothing to output)."""
        ev = self.decode.record(rec) if isinstance(rec, bytes) else self.decode.decision(rec)
        return None if ev is None else self.enrich(ev)

    def enrich(self, ev: KernelEvent) -> dict[str, Any]:
        p, parent = self.lineage.lookup(ev)
        k = ev.proc
        container = self.identity.container(k.cgroup_id, k.pid, isinstance(ev, ExecEvent))
        out = self.format(ev, p, parent, container)
        self.stats.events[out["type"]] += 1
        if type(ev) is OpenEvent and ev.repeat is not None:
            self.stats.aggregated["open"] += ev.repeat[0]
        return out

    def run(self, queue: BatchQueue, stop: threading.Event) -> None:  # noqa: PLR0915 (hot loop)
        # the stages of handle() and enrich(), called here directly: one record costs a
        # few microseconds, and two calls per record are a few percent of that
        route, stats, events = self.route, self.stats, self.stats.events
        aggregated = stats.aggregated
        decode, decision, lineage = self.decode.record, self.decode.decision, \
            self.lineage.lookup
        identity, fmt, enforcement = self.identity.container, self.format.event, \
            self.format.enforcement
        detect = self.detect
        open_lines = self.open_lines
        write_line = route.line_writer("open") if open_lines is not None else None
        while not (stop.is_set() and queue.depth() == 0):
            batch = queue.get(0.2)
            if batch is None:
                route.flush()
                if queue.closed:
                    break
                continue
            if type(batch) is tuple and type(batch[0]) is LossReport:
                route.event(batch[0].event)  # already in its JSON shape (output/loss.py)
                continue
            recs = cast("list[bytes] | tuple[Decision, ...]", batch)
            dec = decode if type(recs) is list else decision  # a tuple: typed decisions
            fast = open_lines if type(recs) is list else None
            if fast is not None:
                fast.new_batch()
            for rec in recs:
                try:
                    if fast is not None:
                        if rec[:2] == b"\x04\x00":  # type: ignore[index]  # Op.OPEN: compiled
                            line = fast(rec)  # type: ignore[arg-type]
                            if line is not None:
                                write_line(line)  # type: ignore[misc]
                                continue
                        else:
                            fast.other()
                    ev = dec(rec)  # type: ignore[arg-type]
                    if ev is None:
                        continue
                    p, parent = lineage(ev)
                    k = ev.proc
                    out = fmt(ev, p, parent,
                              identity(k.cgroup_id, k.pid, isinstance(ev, ExecEvent)))
                    if type(ev) is EnforceEvent:
                        enforcement(out, ev)
                    events[out["type"]] += 1
                    route.event(out)
                    if type(ev) is OpenEvent and ev.repeat is not None:
                        # a summary: detection saw the first of these opens in full
                        aggregated["open"] += ev.repeat[0]
                        continue
                    if detect is not None:
                        alerts = detect(out, p, parent)
                        if alerts:
                            route.alerts(alerts)
                    if fast is not None and type(ev) is OpenEvent:
                        fast.learn(rec, out, p, parent)  # type: ignore[arg-type]
                except Exception:  # a bug on one record must not stop the pipeline thread
                    stats.enrich_errors += 1
                    if stats.enrich_errors <= 10 or stats.enrich_errors % 10000 == 0:
                        log.exception("%s: enrichment failed (%d so far)", describe(rec),
                                      stats.enrich_errors)
        route.flush()
