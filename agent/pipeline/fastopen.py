"""The hot path for open records: record bytes -> the event's JSON line, in one call.

`open_line(rec, offset_ns, mid)` returns, byte for byte, the line the Python pipeline
writes for an open record (agent/events/decode.py `decode_open` -> agent/output/schema.py
`Formatter.event` -> orjson), given

- `offset_ns`: the formatter clock's boot -> wall offset (`Clock._offset`);
- `mid`: the event's middle, `","node":...,"process":{...},"parent":...,"container":...,
  "file":` (`mid_of`), which depends only on the record's mr_proc bytes and the process
  tree's and container resolver's state, so a caller caches it per process view.

It is the C extension `moray.agent._fast` (agent/events/_fast.c) when it was built, else
`open_line_py` below, the same bytes in Python (`FAST` says which). Both raise ValueError
for a record too short for mr_open or whose path runs past its end (the pipeline counts
those in `decode_errors`, as decode.py's DecodeError). tests/unit/agent/test_fast_open.py
compares both with the formatter's own output over recorded, hostile and random records.

The flags and error names come from Python in both paths (schema.py `flag_names`,
`access_of`, errno), so the two cannot disagree on a name.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from moray.agent.events.decode import decode_open
from moray.agent.output.schema import access_of, flag_names

if TYPE_CHECKING:
    from moray.agent.detect.engine import Detector
    from moray.agent.enrich.proctree import Process
    from moray.agent.pipeline.run import Pipeline

log = logging.getLogger(__name__)


def flags_json(flags: int) -> bytes:
    """`"flags":[...],"access":"..."` of an open's flags, as orjson writes them."""
    return orjson.dumps({"flags": flag_names(flags), "access": access_of(flags)})[1:-1]


def error_json(ret: int) -> bytes:
    """`"result":R,"error":"E","fd":null` of a failed open (ret < 0)."""
    return orjson.dumps({"result": ret, "error": errno.errorcode.get(-ret, str(-ret)),
                         "fd": None})[1:-1]


def mid_of(out: dict[str, Any]) -> bytes:
    """The part of an event's line between its time and its `file` object."""
    inner = orjson.dumps({"node": out["node"], "process": out["process"],
                          "parent": out["parent"], "container": out["container"]})
    return b'",' + inner[1:-1] + b',"file":'


_FLAGS: dict[int, bytes] = {}
_ERRORS: dict[int, bytes] = {}
_iso_cache: list[Any] = [-1, ""]  # the last second and its formatted prefix


def _cached(table: dict[int, bytes], fn: Callable[[int], bytes], key: int) -> bytes:
    got = table.get(key)
    if got is None:
        if len(table) >= 1024:
            table.clear()
        got = table[key] = fn(key)
    return got


def open_line_py(rec: bytes, offset_ns: int, mid: bytes) -> bytes:
    """The pure-Python `open_line` (the fallback when the extension is not built)."""
    ev = decode_open(rec)
    s, frac = divmod(ev.ts + offset_ns, 1_000_000_000)
    if s != _iso_cache[0]:
        _iso_cache[0] = s
        _iso_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(s))
    ret = ev.ret
    result = (_cached(_ERRORS, error_json, ret) if ret < 0
              else b'"result":0,"error":null,"fd":' + str(ret).encode())
    root = (b"null" if ev.path_as_written else
            b'"private"' if ev.private_root else b'"host"')
    return b"".join((
        b'{"type":"open","time":"', f"{_iso_cache[1]}{frac:09d}Z".encode(), mid,
        b'{"path":', orjson.dumps(ev.path), b",", _cached(_FLAGS, flags_json, ev.flags),
        b",", result,
        b',"path_as_written":', b"true" if ev.path_as_written else b"false",
        b',"truncated":', b"true" if ev.truncated else b"false",
        b',"root":', root, b"}}\n"))


open_line: Callable[[bytes, int, bytes], bytes]
try:
    from moray.agent import _fast
except ImportError:  # built without a compiler (setup.py: the extension is optional)
    FAST = False
    open_line = open_line_py
else:
    FAST = True
    _fast.set_tables(flags_json, error_json)
    open_line = _fast.open_line


_PROC_OFF, _PROC_END = 16, 88  # mr_proc in every record (decode.py _PROC_OFF/_PROC_END)
_OPEN_SIZE = 104               # mr_open (agent/bpf/abi.py; _fast.c OPEN_SIZE)


def _file_key(rec: bytes) -> bytes:
    """What an open's `file` object depends on, from the record: flags, the result when
    it is an error (an fd's number changes no rule's view), pflags, the path bytes. Finer
    than the detection's Ctx.file_key (several byte strings decode to one path), never
    coarser."""
    return rec[88:] if rec[95] & 0x80 else rec[88:92] + rec[96:]


class OpenLines:
    """Open records -> their JSON lines, the way `Pipeline.run` uses `open_line`.

    `lines(rec)` is the line, or None: take the Python path for this record (decode,
    tree, identity, format, detect, route), then `lines.learn(rec, event, proc, parent)`.
    The first open of a process view (its mr_proc bytes) in a batch takes the Python path
    and leaves its `mid`; the next ones cost one `open_line`. What could make a cached mid
    stale clears it: a new batch (`new_batch`: a container resolved meanwhile, the clock's
    resync), any other record (`other`: a fork, exec or exit changes the tree), the tree's
    generation.

    With a `detector` whose rules read open events, an open takes the compiled path only
    when its file (flags, error, pflags, path bytes) is known to match no rule's file
    tests (`FilePlan.last`, read right after detection ran on the Python path): detection
    would do nothing with it but count it (`Detector.evaluated`, counted here too). Any
    other open (a watched file, a path not seen yet) takes the Python path and detection
    sees it. A flood of new files backs the compiled path off (`_window`).

    tests/unit/test_fast_open.py checks its lines; bench/pipeline_bench.py --fast
    measures it."""

    # bounds, in entries and in bytes: a path is up to 4 KiB and a process's JSON (its
    # args) a few, and both are attacker-chosen (docs/plan-agent-cost.md §7, RSS)
    MIDS_MAX, MIDS_BYTES = 4096, 2 << 20
    QUIET_MAX, QUIET_BYTES = 8192, 2 << 20
    GATE_WINDOW, GATE_BACKOFF = 4096, 16384

    def __init__(self, pipeline: Pipeline, line: Callable[[bytes, int, bytes], bytes] | None
                 = None, detector: Detector | None = None) -> None:
        self.pipeline = pipeline
        self.line = line or open_line
        self._tree = pipeline.lineage.tree
        self._clock = pipeline.format.fmt.clock
        self._events = pipeline.stats.events
        self._mids: dict[bytes, bytes] = {}
        self._mids_bytes = 0
        self._quiet_bytes = 0
        self._gen = -1
        self._offset = 0
        self._det = detector
        self._plan = detector.rules.file_plans.get("open") if detector is not None else None
        self._quiet: dict[bytes, bool] = {}  # _file_key -> no rule's file tests hold
        self._keyed: tuple[bytes, bytes] | None = None  # the last gated open, its key
        self._tries = self._hits = self._off = 0
        self.backoffs = 0  # windows that ended in a back-off
        self.new_batch()

    def new_batch(self) -> None:
        self._mids.clear()
        self._mids_bytes = 0
        clock = self._clock
        if time.monotonic() >= clock._next:
            clock._sync()
        self._offset = clock._offset

    def other(self) -> None:
        self._mids.clear()
        self._mids_bytes = 0

    def __call__(self, rec: bytes) -> bytes | None:
        if self._off:  # backing off (see `_window`)
            self._off -= 1
            return None
        if self._tree.gen != self._gen:
            self._mids.clear()
            self._mids_bytes = 0
            self._gen = self._tree.gen
            return None
        mid = self._mids.get(rec[_PROC_OFF:_PROC_END])
        if mid is None:
            return None
        plan = self._plan
        if plan is not None:
            if len(rec) < _OPEN_SIZE:
                return None
            key = _file_key(rec)
            self._tries += 1
            quiet = self._quiet.get(key)
            if quiet:
                self._hits += 1
            if self._tries >= self.GATE_WINDOW:
                self._window()
            if not quiet:
                self._keyed = (rec, key)  # for learn() of this record, next
                return None
        try:
            line = self.line(rec, self._offset, mid)
        except ValueError:  # the Python path counts it in decode_errors
            return None
        self._events["open"] += 1
        if plan is not None:
            self._det.evaluated += 1  # type: ignore[union-attr]
        return line

    def _window(self) -> None:
        """End of a window of GATE_WINDOW gated opens: when fewer than a quarter were of
        files known to match no rule (a flood of new files: each needs detection, and
        trying the compiled path first only adds to its cost), the next GATE_BACKOFF opens
        go straight to the Python path, learning nothing; then it tries again."""
        if self._hits * 4 < self._tries:
            self._off = self.GATE_BACKOFF
            self.backoffs += 1
        self._tries = self._hits = 0

    def learn(self, rec: bytes, out: dict[str, Any], proc: Process,
              parent: Process | None) -> None:
        """After the Python path of the open record `rec` (`out` its event, detection
        run): remember its mid and whether its file can match a rule."""
        self._gen = self._tree.gen          # the Python path may have changed the tree
        self._offset = self._clock._offset  # and the clock may have resynced
        if self._off:
            return
        raw = rec[_PROC_OFF:_PROC_END]
        if raw not in self._mids:
            mid = mid_of(out)
            self._mids_bytes += len(mid)
            if len(self._mids) >= self.MIDS_MAX or self._mids_bytes > self.MIDS_BYTES:
                self._mids.clear()
                self._mids_bytes = len(mid)
            self._mids[raw] = mid
        plan = self._plan
        if plan is not None:
            keyed, self._keyed = self._keyed, None
            if keyed is not None and keyed[0] is rec:  # the same object: the same bytes
                key = keyed[1]
            elif len(rec) < _OPEN_SIZE:
                return
            else:
                key = _file_key(rec)
            last = plan.last  # detection's verdict on this very event, if it had one
            if last is not None and last[0] is out and key not in self._quiet:
                self._quiet_bytes += len(key)
                if len(self._quiet) >= self.QUIET_MAX or self._quiet_bytes > self.QUIET_BYTES:
                    self._quiet.clear()
                    self._quiet_bytes = len(key)
                self._quiet[key] = not last[1]


__all__ = ["FAST", "OpenLines", "error_json", "flags_json", "mid_of", "open_line",
           "open_line_py"]
