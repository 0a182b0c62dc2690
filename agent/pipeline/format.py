"""Stage 4, format: a kernel event with its processes and container -> the JSON event.

The shape is built by agent/output/schema.py `Formatter` (docs/events.md). Enforcement
events get one more step here: an exec decision names the new image (`new_image`).
"""

from __future__ import annotations

from typing import Any

from moray.agent.bpf import abi
from moray.agent.enrich.proctree import Process
from moray.agent.events.types import EnforceEvent, KernelEvent
from moray.agent.output.schema import Formatter


class Format:
    def __init__(self, formatter: Formatter) -> None:
        self.fmt = formatter
        self.event = formatter.event  # then enforcement() for an EnforceEvent

    def __call__(self, ev: KernelEvent, p: Process, parent: Process | None,
                 container: dict[str, Any] | None) -> dict[str, Any]:
        out = self.event(ev, p, parent, container)
        if isinstance(ev, EnforceEvent):
            self.enforcement(out, ev)
        return out

    def enforcement(self, out: dict[str, Any], ev: EnforceEvent) -> None:
        new_image(out, ev)


def new_image(out: dict[str, Any], ev: EnforceEvent) -> None:
    """An exec decision is recorded at the exec, before the exec record updates the
    process tree: unless the exec failed (LSM tier, old image goes on), the process is the
    new image (killed before its first instruction, held, or run in monitor mode), so name
    it from the enforcement record; its argv comes with the exec event that follows."""
    if ev.kind not in (abi.EKind.EXEC, abi.EKind.DRIFT) or ev.action == abi.EAction.BLOCKED:
        return
    proc = out["process"] = dict(out["process"])  # the formatter's is shared: copy
    if ev.path:
        proc["binary"] = ev.path
    proc["filename"] = ev.path2 or None
    proc["args"] = []
