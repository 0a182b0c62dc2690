"""The pipeline thread offline (figures printed, never asserted).

Recorded kernel records (tests/fixtures/records/*.bin) go through `Pipeline.run` as the
agent runs it: decode -> process tree -> container identity -> format -> detect (the
default rules) -> route (a JSON-lines sink writing to /dev/null). Per-event cost, median
and best of `--runs` runs, pinned to CPU 0.

`--spool DIR` enrols the route: every event also goes to a `ControlPlaneClient`'s spool
in DIR (never connected), as an agent with `--server` runs. The timed span ends when the
spool's writer thread has written and fsync'd every batch (it shares CPU 0 and the GIL
with the pipeline, as in the agent).

`--export-deny FILTER` (repeatable) puts export filters before the outputs, as the
agent's option does (agent/output/filters.py).

    python bench/pipeline_bench.py [--record open] [--events 200000] [--runs 5] [--spool DIR]
                                   [--export-deny FILTER ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moray.agent.controlplane import ApplyResult, ControlPlaneClient
from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load
from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.reader import BatchQueue
from moray.agent.output.filters import ExportFilter
from moray.agent.output.jsonl import JsonLines
from moray.agent.output.metrics import Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline import Pipeline
from moray.agent.pipeline.route import Router

ROOT = Path(__file__).resolve().parents[1]


def _no_policy(_policy: Any) -> ApplyResult:
    return ApplyResult(ok=True)


def one_run(rec: bytes, n: int, spool_dir: Path | None = None,
            deny: tuple[str, ...] = ()) -> float:
    """Microseconds per record for `n` copies of `rec`."""
    tree = ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None)
    det = Detector(load([]), tree, "/nonexistent")
    sink = JsonLines(os.devnull)
    client = None
    if spool_dir is not None:
        shutil.rmtree(spool_dir, ignore_errors=True)
        client = ControlPlaneClient("127.0.0.1:9", spool_dir, _no_policy,
                                    spool_max_bytes=1 << 40)
    keep = ExportFilter(deny=deny).keep if deny else None
    out = sink if client is None and keep is None else Router(sink, (), client, keep=keep)
    p = Pipeline(tree, out, Formatter("n"), None, Stats(), detect=det.process)
    q = BatchQueue(n + 256)
    batches = n // 256
    for _ in range(batches):
        q.put([rec] * 256)
    q.close()
    t0 = time.perf_counter()
    p.run(q, threading.Event())
    if client is not None:
        client.writer.close()        # every batch handed over is written and fsync'd
    dt = time.perf_counter() - t0
    sink.close()
    if client is not None:
        assert client.spool.stats().records == batches * 256, client.spool.stats()
        client.spool.close()
    return dt / (batches * 256) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", default="open", help="tests/fixtures/records/<NAME>.bin")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--spool", type=Path, help="enrolled: a control-plane spool in this dir")
    ap.add_argument("--export-deny", action="append", default=[], metavar="FILTER",
                    help="an export filter before the outputs (repeatable)")
    a = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    rec = (ROOT / "tests" / "fixtures" / "records" / f"{a.record}.bin").read_bytes()
    res = [one_run(rec, a.events, a.spool, tuple(a.export_deny)) for _ in range(a.runs)]
    where = f", spool in {a.spool}" if a.spool else ""
    where += f", {len(a.export_deny)} export filters" if a.export_deny else ""
    print(f"pipeline, {a.record} records, default rules{where}: median "
          f"{statistics.median(res):.2f} us/event, best {min(res):.2f} "
          f"({', '.join(f'{r:.2f}' for r in res)})")


if __name__ == "__main__":
    main()
