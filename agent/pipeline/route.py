"""Stage 6, route: the pipeline's one exit. Every event and alert leaves through `Router`.

    event -> JSON sink; control-plane spool (when enrolled)
    alert -> JSON sink, flushed at once (alerts are rare and wanted now); every SIEM
             output (agent/output/siem.py); control-plane spool

Export filters (agent/output/filters.py, `keep`) judge each event and alert first: one
they drop goes to no output at all (sink, SIEM, spool, OTLP); detection and enforcement
still see every event (the pipeline hands each event to detect itself, run.py).
Exports (`exports`: agent/output/otlp.py) get every event and moray's own alert object
after the sink; each only queues it for its own thread.

`alert_format` "falco" (--alert-format falco): the sink and the SIEM outputs get each
alert as Falco's JSON (agent/output/falco.py) instead of moray's; the control-plane spool
always gets moray's own alert, which the server stores and indexes.

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

A batch's lines are copied into one buffer as they are made, not kept one object each:
holding 500 encoded lines (each over pymalloc's 512 bytes) and freeing them together
made glibc give the heap's top back to the kernel and fault it in again: +0.7 us per
open event on the pipeline thread offline (+1.6 on the main thread), where a copy of a
line costs ~0.05 us.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from moray.agent.output.falco import FORMATS, UserNames, to_falco
from moray.agent.output.jsonl import EventSink
from moray.agent.output.siem import AlertOutput


class Spooler(Protocol):
    """agent/controlplane ControlPlaneClient, as the router uses it: `submit` hands a
    batch to the spool's writer thread and returns at once. ``lines`` is the events'
    JSON lines, the bytes the sink got: line i (newline-terminated; orjson never writes
    a newline inside one) is ``events[i]``'s."""

    def submit(self, events: list[Any], lines: bytearray) -> None: ...


class Export(Protocol):
    """An output beside the sink that takes events and alerts as objects and queues them
    (agent/output/otlp.py OtlpExport); it must return at once."""

    def event(self, e: dict[str, Any]) -> None: ...
    def alert(self, a: dict[str, Any]) -> None: ...


class Router:
    def __init__(self, sink: EventSink, alert_outputs: Sequence[AlertOutput] = (),
                 spool: Spooler | None = None, batch: int = 500,
                 alert_format: str = "moray", host_root: str = "/",
                 keep: Callable[[dict[str, Any]], bool] | None = None,
                 exports: Sequence[Export] = ()) -> None:
        if alert_format not in FORMATS:
            raise ValueError(f"alert format {alert_format!r}: one of {', '.join(FORMATS)}")
        self.sink = sink
        self.falco = alert_format == "falco"
        self._users = UserNames(host_root)  # user.name of Falco's alerts: the host's passwd
        self.outputs = list(alert_outputs)
        self.spool = spool
        self.batch = batch
        self._pending: list[dict[str, Any]] = []
        self._lines = bytearray()           # the JSON lines of the pending events
        self._write_encoded: Callable[[bytes], None] | None = getattr(
            sink, "write_encoded", None)
        self.keep = keep
        self.exports = list(exports)
        # an event with one destination goes to the sink's write, with no call between
        self.event: Callable[[dict[str, Any]], None] = (
            sink.write if spool is None else self._event_and_spool())
        if keep is not None or self.exports:
            self.event = self._filtered(self.event)

    def _filtered(self, inner: Callable[[dict[str, Any]], None]
                  ) -> Callable[[dict[str, Any]], None]:
        """The event path with the export filters before it and the exports after."""
        keep, exports = self.keep, [x.event for x in self.exports]

        def event(event: dict[str, Any]) -> None:
            if keep is not None and not keep(event):
                return
            inner(event)
            for x in exports:
                x(event)
        return event

    def _event_and_spool(self) -> Callable[[dict[str, Any]], None]:
        """The enrolled event path, its names bound once (a few percent of an event's
        cost): encode; the line to the sink and, with the event, to the pending batch."""
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        pending, add = self._pending, self._pending.append
        write_line, write, batch = self._write_encoded, self.sink.write, self.batch
        hand_over = self._hand_over

        def event(event: dict[str, Any]) -> None:
            line = dumps(event, option=newline)
            if write_line is not None:
                write_line(line)
            else:
                write(event)
            add(event)
            self._lines += line
            if len(pending) >= batch:
                hand_over()
        return event

    def line_writer(self, etype: str) -> Callable[[bytes], None] | None:
        """Where an event already encoded as its JSON line goes (the compiled open path,
        fastopen.py), or None when an export filter or export needs the event object (or
        the sink takes no lines). Enrolled, the spool gets the line and, for the event, a
        shared read-only {"type": etype}: with the line it reads only the type and the
        id (ControlPlaneClient._records), and the id is then made there as for a dict."""
        write_line = self._write_encoded
        if self.keep is not None or self.exports or write_line is None:
            return None
        if self.spool is None:
            return write_line
        stand_in = {"type": etype}
        pending, add, batch = self._pending, self._pending.append, self.batch
        hand_over = self._hand_over

        def line_event(line: bytes) -> None:
            write_line(line)
            add(stand_in)
            self._lines += line
            if len(pending) >= batch:
                hand_over()
        return line_event

    def alerts(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            if self.keep is not None and not self.keep(alert):
                continue
            encoded = orjson.dumps(alert)
            line = encoded + b"\n"
            shown, shown_encoded, shown_line = alert, encoded, line
            if self.falco:
                shown = to_falco(alert, self._users)
                shown_encoded = orjson.dumps(shown)
                shown_line = shown_encoded + b"\n"
            if self._write_encoded is not None:
                self._write_encoded(shown_line)
            else:
                self.sink.write(shown)
            for o in self.outputs:
                o.publish(alert, shown_encoded)
            if self.spool is not None:
                self._pending.append(alert)
                self._lines += line
            for x in self.exports:
                x.alert(alert)
        self.flush()

    def _hand_over(self) -> None:
        assert self.spool is not None
        events, lines = self._pending[:], self._lines
        self._pending.clear()           # cleared in place: the event path holds it
        self._lines = bytearray()
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
