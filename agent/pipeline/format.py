"""Stage 4, format: a kernel event with its processes and container -> the JSON event.

The shape is built by agent/output/schema.py `Formatter` (docs/events.md). Enforcement
events (from the kernel, or typed decisions from agent/policy/hold.py) get one more
step, `enforcement`: the decision's explanation (which policy, which rule: the pure
agent/policy/explain.py, over the policies each slot held when the record was made) replaces
the raw masks, and an exec decision names the new image (`new_image`). A HELD exec's
paths are noted for the decision that follows it (decode.py `HeldExecs`). A change to a
covered file that the kill-after tier could not prevent gets `residue`: what it left and
what the agent undid (agent/policy/identity.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from moray.agent.bpf import abi
from moray.agent.enrich.proctree import Process
from moray.agent.events.types import EnforceEvent, KernelEvent
from moray.agent.output.schema import Formatter
from moray.agent.pipeline.decode import HeldExecs
from moray.agent.policy.explain import explain
from moray.api.policy.model import Policy


class PolicyTable(Protocol):
    """agent/policy/engine.py PolicyEngine: the policies by slot as they were when the
    kernel made a record (boot-clock ns; agent/policy/slots.py), also for records made
    before a restart or a replacement."""

    def policies_at(self, ts: int) -> Mapping[int, Policy]: ...


class Format:
    def __init__(self, formatter: Formatter, held: HeldExecs | None = None) -> None:
        self.fmt = formatter
        self.event = formatter.event  # then enforcement() for an EnforceEvent
        self.held = held if held is not None else HeldExecs()
        self._table: PolicyTable | None = None
        self._tiers: Mapping[str, str] = {}
        # issue 13: what a killed call left behind, undone where safe (policy/residue.py)
        self._residue: Callable[[EnforceEvent, dict[str, Any]], None] | None = None

    def explain_with(self, table: PolicyTable, tiers: Mapping[str, str]) -> None:
        """Explain enforcement events by `table`'s policies (without: the raw masks)."""
        self._table, self._tiers = table, tiers

    def repair_with(self, residue: Callable[[EnforceEvent, dict[str, Any]], None]) -> None:
        """Report (and undo) what killed namespace / setid calls left (issue 13)."""
        self._residue = residue

    def __call__(self, ev: KernelEvent, p: Process, parent: Process | None,
                 container: dict[str, Any] | None) -> dict[str, Any]:
        out = self.event(ev, p, parent, container)
        if isinstance(ev, EnforceEvent):
            self.enforcement(out, ev)
        return out

    def enforcement(self, out: dict[str, Any], ev: EnforceEvent) -> None:
        self.held.note(ev)
        if self._table is not None:
            ident = getattr(self._table, "identity", None)  # agent/policy/identity.py
            enf = out["enforcement"] = explain(
                ev, self._table.policies_at(ev.ts), self._tiers,
                name_of=ident.name_of if ident is not None else None)
            if (ident is not None and ev.ident is not None and ev.action == abi.EAction.KILLED
                    and (ev.kind == abi.EKind.LINK
                         or (ev.kind == abi.EKind.FILE and ev.arg & 2))):
                # kill-after: the change was made; say what is left and undo what is safe
                enf["residue"] = ident.residue(ev.ident, ev.proc.pid, ev.ts)
            elif (ident is not None and ev.kind == abi.EKind.FILE and ev.arg & 2
                  and ev.action == abi.EAction.KILLED):
                # a write open by a covered name of a file no walk saw: O_CREAT made it
                where = (out.get("container") or {}).get("id") or "host"
                enf["residue"] = ident.residue_created(ev.path, where, ev.proc.pid, ev.ts)
            if self._residue is not None and ev.kind in (abi.EKind.NS, abi.EKind.SETID,
                                                         abi.EKind.SYSCALL):
                self._residue(ev, enf)
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
