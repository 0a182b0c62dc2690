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

`--distinct N` cycles over N open records for N distinct paths (`/var/tmp/moray-bench/f<i>`,
made from the open fixture) instead of one record repeated: the per-path caches (the
formatter's `file` objects, detection's file plans, at most 4,096 entries) then miss as
they do under a flood of distinct files. `--stages` prints the cost split by stage
(the reader's ring copy, decode, tree, identity + format, encode + write, detect), each
measured by running the stages up to it over the same records (medians of `--runs`);
`--profile` prints cProfile's top functions of one run. `--fast` (open records) prints,
side by side in one run, decode + tree + identity + format + encode + write of the Python
pipeline and of the compiled hot path (agent/pipeline/fastopen.py `OpenLines` over
moray.agent._fast, and over its pure-Python fallback), detection not included; then the
whole `Pipeline.run` with and without `fast_open`, with the default rules and with none.

    python bench/pipeline_bench.py [--record open] [--events 200000] [--runs 5] [--spool DIR]
                                   [--export-deny FILTER ...] [--distinct N] [--stages]
                                   [--profile] [--fast]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import mmap
import os
import pstats
import shutil
import statistics
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moray.agent.bpf import abi
from moray.agent.bpf.ringbuf import RingBuffer
from moray.agent.controlplane import ApplyResult, ControlPlaneClient
from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load
from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.reader import BatchQueue
from moray.agent.output.filters import ExportFilter
from moray.agent.output.jsonl import JsonLines
from moray.agent.output.metrics import Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline import Pipeline, fastopen
from moray.agent.pipeline.route import Router

ROOT = Path(__file__).resolve().parents[1]


def _no_policy(_policy: Any) -> ApplyResult:
    return ApplyResult(ok=True)


def distinct_opens(rec: bytes, n: int) -> list[bytes]:
    """`n` copies of the open record `rec`, each for its own path."""
    size = abi.OPEN.compile().size
    at = struct.calcsize(abi.OPEN.compile().format[:-3])  # offset of path_len ("H4x" last)
    out = []
    for i in range(n):
        path = f"/var/tmp/moray-bench/f{i}".encode()
        head = bytearray(rec[:size])
        struct.pack_into("<H", head, at, len(path))
        struct.pack_into("<H", head, 2, size + len(path))  # hdr.size
        out.append(bytes(head) + path)
    return out


def records(rec: bytes, distinct: int) -> list[bytes]:
    return distinct_opens(rec, distinct) if distinct else [rec]


def pipeline(spool_dir: Path | None = None, deny: tuple[str, ...] = (),
             rules: bool = True, fast_open: bool = False
             ) -> tuple[Pipeline, JsonLines, ControlPlaneClient | None]:
    tree = ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None)
    det = Detector(load([], default=rules), tree, "/nonexistent")
    sink = JsonLines(os.devnull)
    client = None
    if spool_dir is not None:
        shutil.rmtree(spool_dir, ignore_errors=True)
        client = ControlPlaneClient("127.0.0.1:9", spool_dir, _no_policy,
                                    spool_max_bytes=1 << 40)
    keep = ExportFilter(deny=deny).keep if deny else None
    out = sink if client is None and keep is None else Router(sink, (), client, keep=keep)
    return Pipeline(tree, out, Formatter("n"), None, Stats(), detect=det.process,
                    fast_open=fast_open), sink, client


def one_run(recs: list[bytes], n: int, spool_dir: Path | None = None,
            deny: tuple[str, ...] = (), rules: bool = True, fast_open: bool = False
            ) -> float:
    """Microseconds per record for `n` records cycled from `recs`."""
    p, sink, client = pipeline(spool_dir, deny, rules, fast_open)
    assert (p.open_lines is not None) == fast_open
    q = BatchQueue(n + 256, max_bytes=1 << 40)  # every record queued: no drop
    batches = n // 256
    stream = itertools.cycle(recs)
    for _ in range(batches):
        q.put([next(stream) for _ in range(256)])
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


class _Ring(RingBuffer):
    """A RingBuffer over anonymous memory, filled here as the kernel would."""

    def __init__(self, data_size: int) -> None:  # no map fd, no epoll
        self._page = mmap.PAGESIZE
        self._mask = data_size - 1
        self._cons = mmap.mmap(-1, self._page)
        self._prod = mmap.mmap(-1, self._page + data_size)
        self._view = memoryview(self._prod)
        self._map_positions()
        self.size = data_size

    def fill(self, recs: list[bytes]) -> int:
        """Commit `recs` after the consumer position; returns how many fit."""
        pos = self._prod_pos[0]
        n = 0
        for r in recs:
            need = (len(r) + 8 + 7) & ~7
            if pos + need - self._cons_pos[0] > self.size:
                break
            off = self._page + (pos & self._mask)
            struct.pack_into("<II", self._prod, off, len(r), 0)
            start = off + 8 - (self.size if off + 8 >= self._page + self.size else 0)
            first = min(len(r), self._page + self.size - start)
            self._prod[start:start + first] = r[:first]
            self._prod[self._page:self._page + len(r) - first] = r[first:]
            pos += need
            n += 1
        self._prod_pos[0] = pos
        return n


def stage_split(recs: list[bytes], n: int) -> dict[str, float]:
    """Microseconds per record for each stage (see the module docstring)."""
    stream = itertools.cycle(recs)
    batches = [[next(stream) for _ in range(2048)] for _ in range(max(1, n // 2048))]
    total = sum(map(len, batches))
    ring = _Ring(1 << 20)
    t0 = time.perf_counter()
    for batch in batches:
        ring.fill(batch)
        got = ring.consume(2048)
    t_fill_consume = time.perf_counter() - t0
    assert got == batches[-1]
    t0 = time.perf_counter()
    for batch in batches:
        ring.fill(batch)
        ring._cons_pos[0] = ring._prod_pos[0]  # released unread: the filling alone
    t_fill = time.perf_counter() - t0
    q = BatchQueue(1 << 20, max_bytes=1 << 40)
    t0 = time.perf_counter()
    for batch in batches:
        q.put(batch)
        q.get(0)
    t_queue = time.perf_counter() - t0

    p, sink, _ = pipeline()
    dec, lineage = p.decode.record, p.lineage.lookup
    identity, fmt, detect = p.identity.container, p.format.event, p.detect
    write = sink.write
    assert detect is not None

    def upto(stage: int) -> float:
        t0 = time.perf_counter()
        for batch in batches:
            for rec in batch:
                ev = dec(rec)
                if stage < 1 or ev is None:
                    continue
                pr, parent = lineage(ev)
                if stage < 2:
                    continue
                k = ev.proc
                out = fmt(ev, pr, parent, identity(k.cgroup_id, k.pid, False))
                if stage < 3:
                    continue
                write(out)
                if stage < 4:
                    continue
                detect(out, pr, parent)
        return time.perf_counter() - t0

    cum = [upto(i) for i in range(5)]
    sink.close()
    per = 1e6 / total
    return {"ring copy (consume)": (t_fill_consume - t_fill) * per,
            "queue put+get": t_queue * per,
            "decode": cum[0] * per, "tree": (cum[1] - cum[0]) * per,
            "identity + format": (cum[2] - cum[1]) * per,
            "encode + write": (cum[3] - cum[2]) * per, "detect": (cum[4] - cum[3]) * per}


def fast_split(recs: list[bytes], n: int, spool_dir: Path | None = None) -> dict[str, float]:
    """Microseconds per open record: the Python pipeline's decode..write against
    OpenLines (the C extension, then the fallback), batches of 2,048 as the reader's."""
    import orjson
    stream = itertools.cycle(recs)
    batches = [[next(stream) for _ in range(2048)] for _ in range(max(1, n // 2048))]
    total = sum(map(len, batches))
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE

    def python() -> float:
        p, sink, _ = pipeline()
        dec, lineage, identity, fmt = (p.decode.record, p.lineage.lookup,
                                       p.identity.container, p.format.event)
        write = sink.write_encoded
        t0 = time.perf_counter()
        for batch in batches:
            for rec in batch:
                ev = dec(rec)
                if ev is None:
                    continue
                pr, parent = lineage(ev)
                k = ev.proc
                write(dumps(fmt(ev, pr, parent, identity(k.cgroup_id, k.pid, False)),
                            option=newline))
        dt = time.perf_counter() - t0
        sink.close()
        return dt

    def fast(line: Any) -> float:
        p, sink, _ = pipeline(rules=False)
        lines = fastopen.OpenLines(p, line)
        dec, lineage, enrich = p.decode.record, p.lineage.lookup, p.enrich
        write = sink.write_encoded
        t0 = time.perf_counter()
        for batch in batches:
            lines.new_batch()
            for rec in batch:
                got = lines(rec)
                if got is None:  # the first of its process in the batch: the Python path
                    ev = dec(rec)
                    if ev is None:
                        continue
                    pr, parent = lineage(ev)
                    out = enrich(ev)
                    lines.learn(rec, out, pr, parent)
                    got = dumps(out, option=newline)
                write(got)
        dt = time.perf_counter() - t0
        sink.close()
        return dt

    per = 1e6 / total
    out = {"python pipeline": python() * per}
    if fastopen.FAST:
        out["OpenLines, C"] = fast(fastopen.open_line) * per
    out["OpenLines, py fallback"] = fast(fastopen.open_line_py) * per
    # the whole pipeline thread (Pipeline.run over the queue), with the default rules
    # (opens of files no rule matches skip detection once learnt) and with none
    out["run, default rules, py"] = one_run(recs, n)
    out["run, default rules, fast"] = one_run(recs, n, fast_open=True)
    out["run, no rules, py"] = one_run(recs, n, rules=False)
    out["run, no rules, fast"] = one_run(recs, n, rules=False, fast_open=True)
    if spool_dir is not None:  # enrolled: the spool's writer thread shares the core
        out["run, default, spool, py"] = one_run(recs, n, spool_dir)
        out["run, default, spool, fast"] = one_run(recs, n, spool_dir, fast_open=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", default="open", help="tests/fixtures/records/<NAME>.bin")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--spool", type=Path, help="enrolled: a control-plane spool in this dir")
    ap.add_argument("--export-deny", action="append", default=[], metavar="FILTER",
                    help="an export filter before the outputs (repeatable)")
    ap.add_argument("--distinct", type=int, default=0, metavar="N",
                    help="cycle over N open records of distinct paths (--record open)")
    ap.add_argument("--stages", action="store_true", help="print the cost split by stage")
    ap.add_argument("--profile", action="store_true", help="cProfile one run, top functions")
    ap.add_argument("--fast", action="store_true",
                    help="open records: the Python path against the compiled hot path")
    a = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    rec = (ROOT / "tests" / "fixtures" / "records" / f"{a.record}.bin").read_bytes()
    recs = records(rec, a.distinct)
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(one_run, recs, a.events, a.spool, tuple(a.export_deny))
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if a.stages:
        splits = [stage_split(recs, a.events) for _ in range(a.runs)]
        total = 0.0
        what = f"{a.distinct:,} distinct paths" if a.distinct else "one record repeated"
        print(f"stages, {a.record} records ({what}), us/event, median of {a.runs}:")
        for k in splits[0]:
            v = statistics.median(s[k] for s in splits)
            total += v
            print(f"  {k:<22} {v:6.2f}")
        print(f"  {'total':<22} {total:6.2f}  (= {1e6 / total:,.0f} events/s on one core)")
    if a.fast:
        fsplits = [fast_split(recs, a.events, a.spool) for _ in range(a.runs)]
        what = f"{a.distinct:,} distinct paths" if a.distinct else "one record repeated"
        print(f"decode..write, {a.record} records ({what}), us/event, median of {a.runs} "
              f"(extension built: {fastopen.FAST}):")
        for k in fsplits[0]:
            v = statistics.median(s[k] for s in fsplits)
            print(f"  {k:<24} {v:6.2f}  ({', '.join(f'{s[k]:.2f}' for s in fsplits)})")
    res = [one_run(recs, a.events, a.spool, tuple(a.export_deny)) for _ in range(a.runs)]
    where = f", {a.distinct:,} distinct paths" if a.distinct else ""
    where += f", spool in {a.spool}" if a.spool else ""
    where += f", {len(a.export_deny)} export filters" if a.export_deny else ""
    print(f"pipeline, {a.record} records, default rules{where}: median "
          f"{statistics.median(res):.2f} us/event, best {min(res):.2f} "
          f"({', '.join(f'{r:.2f}' for r in res)})")


if __name__ == "__main__":
    main()
