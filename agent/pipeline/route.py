"""Stage 6, route: the pipeline's one exit. Every event and alert leaves through `Router`.

    event -> JSON sink; control-plane spool (when enrolled)
    alert -> JSON sink, flushed at once (alerts are rare and wanted now); every SIEM
             output (agent/output/siem.py); control-plane spool

Each format is encoded once: an alert's JSON is made here and handed, as bytes, to the
sink and to the SIEM outputs (syslog carries it, the webhook posts it). Events bound for
the server are handed to the spool in batches (`batch` events, or at every flush), so
one spool write covers many events; the spool's writer thread (agent/controlplane/
spool.py `SpoolWriter`) encodes them once, as msgpack, writes and fsyncs them off the
pipeline thread, and the spool counts what it refuses (full).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from moray.agent.output.jsonl import EventSink
from moray.agent.output.siem import AlertOutput


class Spooler(Protocol):
    """agent/controlplane ControlPlaneClient, as the router uses it: `submit` hands a
    batch to the spool's writer thread and returns at once."""

    def submit(self, events: list[Any]) -> None: ...


class Router:
    def __init__(self, sink: EventSink, alert_outputs: Sequence[AlertOutput] = (),
                 spool: Spooler | None = None, batch: int = 500) -> None:
        self.sink = sink
        self.outputs = list(alert_outputs)
        self.spool = spool
        self.batch = batch
        self._pending: list[dict[str, Any]] = []
        self._write_encoded: Callable[[bytes], None] | None = getattr(
            sink, "write_encoded", None)
        # an event with one destination goes to the sink's write, with no call between
        self.event: Callable[[dict[str, Any]], None] = (
            sink.write if spool is None else self._event_and_spool)

    def _event_and_spool(self, event: dict[str, Any]) -> None:
        self.sink.write(event)
        self._pending.append(event)
        if len(self._pending) >= self.batch:
            self._hand_over()

    def alerts(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            encoded = orjson.dumps(alert)
            if self._write_encoded is not None:
                self._write_encoded(encoded + b"\n")
            else:
                self.sink.write(alert)
            for o in self.outputs:
                o.publish(alert, encoded)
            if self.spool is not None:
                self._pending.append(alert)
        self.flush()

    def _hand_over(self) -> None:
        assert self.spool is not None
        events, self._pending = self._pending, []
        self.spool.submit(events)

    def flush(self) -> None:
        if self._pending:
            self._hand_over()
        self.sink.flush()

    def close(self) -> None:
        """Flush; close the sink. The SIEM outputs are closed by the detect stage that
        built them (agent/detect/stage.py)."""
        self.flush()
        self.sink.close()
