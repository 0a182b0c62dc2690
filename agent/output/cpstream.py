"""The control-plane stream as an event sink: every event written to the local JSON sink is
also spooled for the server (agent/controlplane: fsync'd msgpack segments, sent in acked
batches, replayed in order after a cut). Batches are handed to the spool on flush or every
`batch` events, so one fsync covers many events; a full spool is counted by the spool
itself and reported in heartbeats, never silent.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from moray.agent.output.jsonl import EventSink

log = logging.getLogger(__name__)


class Spooler(Protocol):
    def send_many(self, events: list[Any]) -> int: ...


class TeeToControlPlane:
    def __init__(self, local: EventSink, client: Spooler, batch: int = 500) -> None:
        self.local = local
        self.client = client
        self.batch = batch
        self._pending: list[dict[str, Any]] = []
        self.refused = 0  # events the spool did not accept (full)

    def write(self, event: dict[str, Any]) -> None:
        self.local.write(event)
        self._pending.append(event)
        if len(self._pending) >= self.batch:
            self._hand_over()

    def _hand_over(self) -> None:
        events, self._pending = self._pending, []
        accepted = self.client.send_many(events)
        if accepted < len(events):
            self.refused += len(events) - accepted

    def flush(self) -> None:
        if self._pending:
            self._hand_over()
        self.local.flush()

    def close(self) -> None:
        self.flush()
        self.local.close()
