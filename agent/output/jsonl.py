"""JSON lines sink: one event object per line to a file or stdout.

Writes are buffered and flushed at least every `flush_interval` seconds, so `tail -f`
sees events promptly and a burst costs one write per batch, not per event.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any, Protocol

import orjson

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where the router (agent/pipeline/route.py) writes events and alerts. A sink may
    also offer `write_encoded(line)`: an object already encoded as one JSON line."""

    def write(self, event: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonLines:
    def __init__(self, target: str, flush_interval: float = 0.2) -> None:
        self.target = target
        self._f: IO[bytes] = sys.stdout.buffer if target == "-" else open(  # noqa: SIM115
            target, "ab", buffering=1 << 16)
        self.flush_interval = flush_interval
        self._last = time.monotonic()
        self.errors = 0

    def write(self, event: dict[str, Any]) -> None:
        # write and write_encoded repeat their few lines on purpose: each is called once
        # per event on the pipeline thread, and a shared helper would be one call more
        try:
            self._f.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        except OSError as err:  # full disk, closed pipe: count and go on
            self._lost(err)
        now = time.monotonic()
        if now - self._last >= self.flush_interval:
            self.flush()
            self._last = now

    def write_encoded(self, line: bytes) -> None:
        """`line`: one object's JSON and its newline, encoded by the router, which hands
        the same bytes to the control-plane spool (agent/pipeline/route.py)."""
        try:
            self._f.write(line)
        except OSError as err:
            self._lost(err)
        now = time.monotonic()
        if now - self._last >= self.flush_interval:
            self.flush()
            self._last = now

    def _lost(self, err: OSError) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 10000 == 0:
            log.error("cannot write events to %s: %s (%d lost)", self.target, err.strerror,
                      self.errors)

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as err:
            self.errors += 1
            log.error("cannot flush %s: %s", self.target, err.strerror)

    def close(self) -> None:
        self.flush()
        if self._f is not sys.stdout.buffer:
            self._f.close()
