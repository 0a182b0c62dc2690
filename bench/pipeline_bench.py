"""The pipeline thread offline (figures printed, never asserted).

Recorded kernel records (tests/fixtures/records/*.bin) go through `Pipeline.run` as the
agent runs it: decode -> process tree -> container identity -> format -> detect (the
default rules) -> route (a JSON-lines sink writing to /dev/null). Per-event cost, median
and best of `--runs` runs, pinned to CPU 0.

    python bench/pipeline_bench.py [--record open] [--events 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load
from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.reader import BatchQueue
from moray.agent.output.jsonl import JsonLines
from moray.agent.output.metrics import Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]


def one_run(rec: bytes, n: int) -> float:
    """Microseconds per record for `n` copies of `rec`."""
    tree = ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None)
    det = Detector(load([]), tree, "/nonexistent")
    sink = JsonLines(os.devnull)
    p = Pipeline(tree, sink, Formatter("n"), None, Stats(), detect=det.process)
    q = BatchQueue(n + 256)
    batches = n // 256
    for _ in range(batches):
        q.put([rec] * 256)
    q.close()
    t0 = time.perf_counter()
    p.run(q, threading.Event())
    dt = time.perf_counter() - t0
    sink.close()
    return dt / (batches * 256) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", default="open", help="tests/fixtures/records/<NAME>.bin")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    rec = (ROOT / "tests" / "fixtures" / "records" / f"{a.record}.bin").read_bytes()
    res = [one_run(rec, a.events) for _ in range(a.runs)]
    print(f"pipeline, {a.record} records, default rules: median "
          f"{statistics.median(res):.2f} us/event, best {min(res):.2f} "
          f"({', '.join(f'{r:.2f}' for r in res)})")


if __name__ == "__main__":
    main()
