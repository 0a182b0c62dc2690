"""Stage 6, route: the pipeline's one exit. Every event and alert leaves through `Router`.

    event -> JSON sink; control-plane spool (when enrolled)
    alert -> JSON sink, flushed at once (alerts are rare and wanted now); every SIEM
             output (agent/output/siem.py); control-plane spool

Each format is encoded once. An alert's JSON is made here and handed, as bytes, to the
sink, to the SIEM outputs (syslog carries it, the webhook posts it) and to the spool.
An event bound for the server (enrolled) is encoded here too, on the pipeline thread,
and the same line goes to the sink (`write_encoded`) and to the spool; with no spool an
event goes to the sink's `write` (one call, the sink encodes). Events and their lines
are handed to the spool in batches (`batch` events, or at every flush), so one spool
write covers many events; the spool's writer thread (agent/controlplane/spool.py
`SpoolWriter`) wraps each line in a msgpack record, writes and fsyncs them off the
pipeline thread, the sender puts the JSON in the server's message as it is (agent/
controlplane/client.py), and the spool counts what it refuses (full). A sink without
`write_encoded` (a test's fake) gets `write(event)`; the spool still gets the line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from moray.agent.output.jsonl import EventSink
from moray.agent.output.siem import AlertOutput


class Spooler(Protocol):
    """agent/controlplane ControlPlaneClient, as the router uses it: `submit` hands a
    batch to the spool's writer thread and returns at once. ``lines[i]`` is
    ``events[i]``'s JSON and a newline, the bytes the sink got."""

    def submit(self, events: list[Any], lines: list[bytes]) -> None: ...


class Router:
    def __init__(self, sink: EventSink, alert_outputs: Sequence[AlertOutput] = (),
                 spool: Spooler | None = None, batch: int = 500) -> None:
        self.sink = sink
        self.outputs = list(alert_outputs)
        self.spool = spool
        self.batch = batch
        self._pending: list[dict[str, Any]] = []
        self._lines: list[bytes] = []       # the JSON line of each pending event
        self._write_encoded: Callable[[bytes], None] | None = getattr(
            sink, "write_encoded", None)
        # an event with one destination goes to the sink's write, with no call between
        self.event: Callable[[dict[str, Any]], None] = (
            sink.write if spool is None else self._event_and_spool)

    def _event_and_spool(self, event: dict[str, Any]) -> None:
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        if self._write_encoded is not None:
            self._write_encoded(line)
        else:
            self.sink.write(event)
        self._pending.append(event)
        self._lines.append(line)
        if len(self._pending) >= self.batch:
            self._hand_over()

    def alerts(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            encoded = orjson.dumps(alert)
            line = encoded + b"\n"
            if self._write_encoded is not None:
                self._write_encoded(line)
            else:
                self.sink.write(alert)
            for o in self.outputs:
                o.publish(alert, encoded)
            if self.spool is not None:
                self._pending.append(alert)
                self._lines.append(line)
        self.flush()

    def _hand_over(self) -> None:
        assert self.spool is not None
        events, lines = self._pending, self._lines
        self._pending, self._lines = [], []
        self.spool.submit(events, lines)

    def flush(self) -> None:
        if self._pending:
            self._hand_over()
        self.sink.flush()

    def close(self) -> None:
        """Flush; close the sink. The SIEM outputs are closed by the detect stage that
        built them (agent/detect/stage.py)."""
        self.flush()
        self.sink.close()
