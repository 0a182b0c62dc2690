"""The open hot path (agent/pipeline/fastopen.py, agent/events/_fast.c) against the
Python pipeline: the same bytes for recorded records, generated hostile paths (invalid
UTF-8, control characters, quotes, backslashes, 4 KiB), every flag and result, and random
or truncated records (no crash; the same records refused, as ValueError)."""

from __future__ import annotations

import errno
import os
import random
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from moray.agent.bpf import abi
from moray.agent.detect.engine import Detector
from moray.agent.detect.load import load
from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.decode import decode_open
from moray.agent.events.reader import BatchQueue
from moray.agent.output.jsonl import JsonLines
from moray.agent.output.metrics import Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline import Pipeline, fastopen
from moray.agent.pipeline.fastopen import OpenLines, mid_of, open_line_py
from moray.agent.pipeline.route import Router

REC = Path(__file__).resolve().parents[1] / "fixtures" / "records"
SIZE = abi.OPEN.compile().size
_AT = struct.calcsize(abi.OPEN.compile().format[:-3])  # path_len ("H4x" last)
_FLAGS_AT = _AT - 10                                    # flags, ret, pflags, path_len

try:
    from moray.agent import _fast
    C: Callable[[bytes, int, bytes], bytes] | None = _fast.open_line
except ImportError:
    C = None

IMPLS = [pytest.param(open_line_py, id="python"),
         pytest.param(C, id="c", marks=pytest.mark.skipif(
             C is None, reason="moray.agent._fast not built (setup.py build_ext --inplace)"))]


class _Null:
    def write(self, event: dict[str, object]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def make(path: bytes, flags: int = os.O_RDONLY, ret: int = 3, pflags: int = 0,
         ts: int | None = None, base: str = "open") -> bytes:
    rec = bytearray((REC / f"{base}.bin").read_bytes()[:SIZE])
    struct.pack_into("<IiHH", rec, _FLAGS_AT, flags, ret, pflags, len(path))
    struct.pack_into("<H", rec, 2, (SIZE + len(path)) & 0xFFFF)
    if ts is not None:
        struct.pack_into("<Q", rec, 8, ts)
    return bytes(rec) + path


HOSTILE = [
    b"/etc/hostname", b"", b"rel/ative", b'/tmp/"quoted"\\back\\slash',
    bytes(range(1, 0x80)), b"/tmp/\x00nul", b"/tmp/\x7fdel",
    "/tmp/caf\u00e9/\u2028/\U0001f600".encode(),
    b"/tmp/\xff\xfe", b"/tmp/\xc0\xaf", b"/tmp/\xe0\x80\xaf", b"/tmp/\xed\xa0\x80",  # overlong,
    b"/tmp/\xf4\x90\x80\x80", b"/tmp/\xf5\x80", b"/tmp/\xe2\x82", b"/tmp/\xe2\x82x",  # surrogate
    b"/tmp/\xf0\x9f\x98", b"/tmp/\x80\xbf", b"/tmp/\xc2", b"\xef\xbb\xbf/bom",
    b"/" + b"a" * 4095, b"/" + b"\xff" * 4095, b"/" + b"\x01" * 4095,
    bytes(random.Random(1).randrange(256) for _ in range(4096)),
]
CASES = [(p, os.O_RDONLY, 3, 0) for p in HOSTILE] + [
    (b"/etc/x", f, r, pf)
    for f in (os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_RDWR | os.O_APPEND,
              3, 0o10000000 | os.O_CLOEXEC, 0o20200000 | os.O_RDWR, 0xFFFFFFFF)
    for r in (0, 7, 2**31 - 1, -errno.ENOENT, -errno.EACCES, -4095, -(2**31), -11, -95)
    for pf in (0, abi.F_PATH_RAW, abi.F_PATH_TRUNC, abi.F_ROOT_PRIVATE,
               abi.F_PATH_RAW | abi.F_PATH_TRUNC | abi.F_ROOT_PRIVATE)
]


def formatter() -> Formatter:
    """A formatter whose clock offset is fixed (two Clocks made a moment apart differ)."""
    fmt = Formatter("node-1")
    fmt.clock._offset = 1_765_000_000_123_456_789
    fmt.clock.resync = 1e9
    fmt.clock._next = float("inf")
    return fmt


def reference(recs: list[bytes]) -> list[tuple[bytes, int, bytes]]:
    """Each record through the Python pipeline: (its line, the clock offset, its mid)."""
    fmt = formatter()
    p = Pipeline(ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None), _Null(),
                 fmt, None, Stats())
    out = []
    for rec in recs:
        ev = p.handle(rec)
        assert ev is not None
        out.append((orjson.dumps(ev, option=orjson.OPT_APPEND_NEWLINE),
                    fmt.clock._offset, mid_of(ev)))
    return out


@pytest.mark.parametrize("impl", IMPLS)
def test_recorded_records_give_the_pipelines_bytes(impl: Callable[..., bytes]) -> None:
    recs = [(REC / "open.bin").read_bytes(), (REC / "open_failed.bin").read_bytes()]
    for rec, (line, offset, mid) in zip(recs, reference(recs), strict=True):
        assert impl(rec, offset, mid) == line


@pytest.mark.parametrize("impl", IMPLS)
def test_hostile_paths_flags_and_results_give_the_pipelines_bytes(
        impl: Callable[..., bytes]) -> None:
    recs = [make(*c) for c in CASES]
    for rec, (line, offset, mid) in zip(recs, reference(recs), strict=True):
        assert impl(rec, offset, mid) == line, rec[SIZE:]
        orjson.loads(line)  # and it is JSON


@pytest.mark.parametrize("impl", IMPLS)
def test_times_across_seconds_and_extremes(impl: Callable[..., bytes]) -> None:
    stamps = [0, 1, 999_999_999, 1_000_000_000, 86_399_999_999_999, 2**63, 2**64 - 1]
    recs = [make(b"/etc/t", ts=t) for t in stamps]
    for rec, (line, offset, mid) in zip(recs, reference(recs), strict=True):
        assert impl(rec, offset, mid) == line


def test_c_and_python_agree_on_random_and_truncated_records() -> None:
    """Fuzz: random bytes and truncations of valid records. Both paths refuse the same
    records (ValueError, counted as decode errors by the pipeline) and agree on the rest;
    the C path never crashes."""
    if C is None:
        pytest.skip("moray.agent._fast not built")
    rng = random.Random(18)
    mid = b'","node":"n","process":null,"parent":null,"container":null,"file":'
    valid = [make(*c) for c in CASES[:30]]
    errors = {"c": 0, "python": 0}
    for i in range(4000):
        if i % 2:
            rec = rng.choice(valid)
            rec = rec[:rng.randrange(len(rec) + 1)]
        else:
            rec = bytes(rng.randrange(256) for _ in range(rng.randrange(SIZE + 64)))
            if len(rec) >= SIZE and rng.random() < 0.5:  # a plausible path length
                rec = rec[:_AT] + struct.pack("<H", rng.randrange(len(rec) - SIZE + 8)) + \
                    rec[_AT + 2:]
        got = {}
        for name, impl in (("c", C), ("python", open_line_py)):
            try:
                got[name] = impl(rec, 1_700_000_000_000_000_000, mid)
            except ValueError:
                errors[name] += 1
                got[name] = None
        assert got["c"] == got["python"], rec
        if got["c"] is not None:
            orjson.loads(got["c"])
    assert errors["c"] == errors["python"] > 0


def test_fallback_is_the_c_path_when_built() -> None:
    assert fastopen.FAST is (C is not None)
    assert fastopen.open_line is (C if C is not None else open_line_py)


def test_decode_open_is_what_the_fallback_reads() -> None:
    rec = make(b"/etc/\xff", ret=-2, pflags=abi.F_PATH_RAW)
    ev = decode_open(rec)
    assert ev.path == "/etc/\\xff" and ev.ret == -2 and ev.path_as_written


def _through(lines: OpenLines, p: Pipeline, rec: bytes) -> bytes | None:
    """One open record as Pipeline.run takes it: the compiled path, else the Python one
    and `learn`."""
    line = lines(rec)
    if line is not None:
        return line
    ev = p.decode.record(rec)
    if ev is None:
        return None
    pr, parent = p.lineage.lookup(ev)
    out = p.enrich(ev)
    lines.learn(rec, out, pr, parent)
    return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)


@pytest.mark.parametrize("impl", IMPLS)
def test_open_lines_cache_the_process_part_and_give_the_same_bytes(
        impl: Callable[..., bytes]) -> None:
    """A batch of opens from two processes, through OpenLines (the mid cached per
    process view) and through the pipeline: the same lines, the same event count."""
    a = [make(b"/etc/a%d" % i, ret=i % 3 - 1) for i in range(20)]
    b = [make(b"/etc/b\xff%d" % i, base="open_failed") for i in range(20)]
    recs = [r for pair in zip(a, b, strict=True) for r in pair]
    want = [line for line, _, _ in reference(recs)]
    stats = Stats()
    p = Pipeline(ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None), _Null(),
                 formatter(), None, stats)
    calls = []

    def counted(rec: bytes, offset: int, mid: bytes) -> bytes:
        calls.append(rec)
        return impl(rec, offset, mid)

    lines = OpenLines(p, counted)
    got = []
    for i, r in enumerate(recs):
        if i == 10:
            lines.new_batch()
        if i == 25:
            lines.other()
        got.append(_through(lines, p, r))
    assert got == want
    assert len(calls) >= 40 - 6  # all but the first of each process per batch, other()
    assert stats.events["open"] == len(recs)
    assert _through(lines, p, recs[0][:SIZE - 1]) is None     # a known process: C refuses
    assert _through(lines, p, b"\x04\x00" + bytes(50)) is None  # a new one: Python refuses
    assert stats.decode_errors == 2


def _run(tmp_path: Path, batches: list[list[bytes]], fast: bool, detect: object = None
         ) -> tuple[bytes, Stats, Pipeline]:
    out = tmp_path / f"events-{fast}.jsonl"
    sink = JsonLines(str(out))
    stats = Stats()
    p = Pipeline(ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None), sink,
                 formatter(), None, stats, detect=detect, fast_open=fast)  # type: ignore[arg-type]
    q = BatchQueue(1 << 16, max_bytes=1 << 30)
    for b in batches:
        q.put(b)
    q.close()
    p.run(q, threading.Event())
    sink.close()
    return out.read_bytes(), stats, p


def test_pipeline_run_with_fast_open_writes_the_same_file(tmp_path: Path) -> None:
    """Pipeline.run over real batches (fork, exec, opens of two processes, hostile
    paths, a corrupt open, exit) with and without the compiled path: the same bytes in
    the JSON-lines file, the same counts."""
    fx = {n: (REC / f"{n}.bin").read_bytes() for n in ("fork", "exec_echo", "exit")}
    opens = [make(*c) for c in CASES[:40]]
    other = [make(b"/x/%d" % i, base="open_failed") for i in range(30)]
    batches = [
        [fx["fork"], *opens[:10], fx["exec_echo"], *opens[10:20]],
        [*[r for pair in zip(opens[20:40], other[:20], strict=True) for r in pair]],
        [opens[0][:SIZE - 3], b"\x04", *other[20:], fx["exit"], opens[5]],
    ]
    slow, s_stats, sp = _run(tmp_path, batches, False)
    fast, f_stats, fp = _run(tmp_path, batches, True)
    assert sp.open_lines is None and fp.open_lines is not None
    assert fast == slow
    assert len(fast.splitlines()) == sum(map(len, batches)) - 2
    assert f_stats.events == s_stats.events and f_stats.decode_errors == 2
    assert f_stats.enrich_errors == s_stats.enrich_errors == 0


def test_pipeline_run_with_default_rules_same_events_and_alerts(tmp_path: Path) -> None:
    """The default rules read opens: opens of files no rule can match take the compiled
    path once learnt, the others (/etc/shadow read, a write below /etc) reach detection
    every time: the same file (events and alerts), the same detection counters."""
    quiet = [make(b"/usr/lib/x%d" % (i % 5)) for i in range(60)]
    loud = [make(b"/etc/shadow"), make(b"/etc/moray-test", os.O_WRONLY | os.O_CREAT)]
    batches = [[*quiet[:30], loud[0], *quiet[30:], loud[1]],
               [r for q in quiet for r in (q, loud[0] if q is quiet[7] else q)]]

    def run(fast: bool) -> tuple[bytes, Stats, Detector, Pipeline]:
        det = Detector(load([]), ProcessTree("/nonexistent",
                                             read_proc=lambda _p, _pid: None), "/nonexistent")
        data, stats, p = _run(tmp_path, batches, fast, det.process)
        return data, stats, det, p

    slow, s_stats, s_det, _ = run(False)
    fast, f_stats, f_det, fp = run(True)
    assert fp.open_lines is not None and any(fp.open_lines._quiet.values())  # learnt
    assert fast == slow
    assert b'"type":"alert"' in fast and b"Read sensitive file" in fast
    assert f_det.alerts == s_det.alerts and f_det.evaluated == s_det.evaluated
    assert f_stats.events == s_stats.events


def test_fast_open_only_when_nothing_needs_open_dicts(tmp_path: Path) -> None:
    tree = ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None)

    def pipe(detect: object = None, **route: object) -> Pipeline:
        out = Router(JsonLines(os.devnull), **route)  # type: ignore[arg-type]
        return Pipeline(tree, out, formatter(), None, Stats(), detect=detect,  # type: ignore[arg-type]
                        fast_open=True)

    assert pipe().open_lines is not None
    assert pipe(Detector(load([], default=False), tree, "/nonexistent").process
                ).open_lines is not None
    default = Detector(load([]), tree, "/nonexistent")
    assert "open" in default.rules.by_type
    assert pipe(default.process).open_lines is not None        # gated per file
    assert pipe(lambda e, p, q: []).open_lines is None         # unknown: no
    assert pipe(keep=lambda e: True).open_lines is None        # export filters
    assert pipe(spool=_Spool()).open_lines is not None          # enrolled: lines spooled
    assert Pipeline(tree, _Null(), formatter(), None, Stats(),   # no write_encoded
                    fast_open=True).open_lines is None


class _Spool:
    """The router's Spooler, as the control-plane client takes batches."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[dict[str, object]], bytes]] = []

    def submit(self, events: list[dict[str, object]], lines: bytearray) -> None:
        self.batches.append((list(events), bytes(lines)))


def test_enrolled_route_spools_the_same_records(tmp_path: Path) -> None:
    """Enrolled (a spool): the compiled path hands the spool the same lines, and for each
    a stand-in the client reads only the type and id from; the spool's records (what
    the server gets) match but for the ids made per record."""
    from moray.agent.controlplane.client import ControlPlaneClient

    opens = [make(*c) for c in CASES[:50]]
    batches = [[(REC / "fork.bin").read_bytes(), *opens[:25]], opens[25:]]

    def run(fast: bool) -> tuple[bytes, list[dict[str, object]]]:
        out = tmp_path / f"enrolled-{fast}.jsonl"
        sink, spool = JsonLines(str(out)), _Spool()
        p = Pipeline(ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None),
                     Router(sink, (), spool, batch=7), formatter(), None, Stats(),
                     fast_open=fast)
        assert (p.open_lines is not None) is fast
        q = BatchQueue(1 << 16, max_bytes=1 << 30)
        for b in batches:
            q.put(b)
        q.close()
        p.run(q, threading.Event())
        sink.close()
        records = [r for events, lines in spool.batches
                   for r in ControlPlaneClient._records(events, lines)]
        for r in records:  # ids are made per record: compare the rest
            r["json"] = r["json"].replace(r["id"].encode(), b"ID")  # type: ignore[union-attr]
            r["id"] = r["t"] = None
        return out.read_bytes(), records

    slow_file, slow = run(False)
    fast_file, fast = run(True)
    assert fast_file == slow_file
    assert fast == slow and len(fast) == 51
    assert all(b'"id":"ID"}' in r["json"] for r in fast)  # type: ignore[operator]


def _default_pipeline() -> tuple[Pipeline, Detector]:
    tree = ProcessTree("/nonexistent", read_proc=lambda _proc, _pid: None)
    det = Detector(load([]), tree, "/nonexistent")
    p = Pipeline(tree, Router(JsonLines(os.devnull)), formatter(), None, Stats(),
                 detect=det.process, fast_open=True)
    assert p.open_lines is not None
    return p, det


def _through_detect(p: Pipeline, rec: bytes) -> None:
    lines = p.open_lines
    assert lines is not None
    if lines(rec) is not None:
        return
    ev = p.decode.record(rec)
    if ev is None:
        return
    pr, parent = p.lineage.lookup(ev)
    out = p.enrich(ev)
    assert p.detect is not None
    p.detect(out, pr, parent)
    lines.learn(rec, out, pr, parent)


def test_a_refused_record_never_lends_its_file_to_the_next(tmp_path: Path) -> None:
    """An open whose gate missed and whose Python path then refused it (a path past the
    record's end) must not have its file judged by the next record's detection."""
    from moray.agent.pipeline.fastopen import _file_key

    p, _ = _default_pipeline()
    lines = p.open_lines
    assert lines is not None
    for _ in range(3):
        _through_detect(p, make(b"/usr/lib/q"))          # learnt: quiet
    bad = make(b"/etc/shadow")[:-3]                        # path past the end
    _through_detect(p, bad)
    other = bytearray(make(b"/usr/lib/r"))
    struct.pack_into("<I", other, 16, 4242)                # another process: mid misses
    _through_detect(p, bytes(other))
    assert _file_key(bad) not in lines._quiet
    assert lines._quiet[_file_key(bytes(other))] is True
    assert p.stats.decode_errors == 1


def test_a_flood_of_new_files_backs_off_and_keeps_the_bytes(tmp_path: Path) -> None:
    """Every open a new file (each needs detection): after a window of gate misses the
    compiled path is not tried for a while; the output is the Python path's throughout."""
    flood = [make(b"/var/tmp/f%d" % i) for i in range(300)]
    batches = [flood[i:i + 50] for i in range(0, 300, 50)]
    old = OpenLines.GATE_WINDOW, OpenLines.GATE_BACKOFF
    OpenLines.GATE_WINDOW, OpenLines.GATE_BACKOFF = 32, 64
    try:
        slow, _, _ = _run(tmp_path, batches, False,
                          Detector(load([]), ProcessTree("/nonexistent"), "/nonexistent").process)
        fast, _, fp = _run(tmp_path, batches, True,
                           Detector(load([]), ProcessTree("/nonexistent"), "/nonexistent").process)
    finally:
        OpenLines.GATE_WINDOW, OpenLines.GATE_BACKOFF = old
    assert fast == slow
    assert fp.open_lines is not None and fp.open_lines.backoffs >= 1
