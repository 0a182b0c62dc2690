"""Stage 6, route: the pipeline's one exit. Every event and alert leaves through `Router`.

Events go to the JSON sink; alerts go to the same sink, flushed at once (they are rare
and wanted now).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moray.agent.output.jsonl import EventSink


class Router:
    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        # an event's one destination is the sink: its write, without a call in between
        self.event: Callable[[dict[str, Any]], None] = sink.write

    def alerts(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            self.sink.write(alert)
        self.sink.flush()

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()
