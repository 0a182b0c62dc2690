"""One event under evaluation: :class:`Ctx` wraps the enriched event (the agent's JSON
object) with the detection state, and computes what several fields need at most once per
event, on demand: the ancestry and the file key that FilePlan memoizes on
(agent/detect/plan.py). The process and its parent are the pipeline's own objects (its
tree stage found them, agent/pipeline/tree.py); only a caller without them (tests, offline
tools) has them looked up in the tree by the event's exec ids. Lives as long as one event's
evaluation; owns no state between events (that is agent/detect/state.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moray.agent.detect.state import State
    from moray.agent.enrich.proctree import Process


class Ctx:
    """One event under evaluation. Ancestry and tree lookups are computed once, on demand."""

    __slots__ = ("_ancestors", "_fkey", "_parent", "_proc", "e", "state")

    def __init__(self, e: dict[str, Any], state: State, proc: Process | None = None,
                 parent: Process | None = None) -> None:
        """``proc`` given: the event's process and ``parent`` its parent (None: none), as
        the pipeline enriched the event with them; else both are looked up on demand."""
        self.e = e
        self.state = state
        self._proc: Process | bool | None = False if proc is None else proc
        self._parent: Process | bool | None = False if proc is None else parent
        self._ancestors: list[Process] | None = None
        self._fkey: tuple[Any, ...] | bool | None = False

    @property
    def file_key(self) -> tuple[Any, ...] | None:
        """Everything the FILE_PURE fields read, as a dict key (None: not a file event)."""
        k = self._fkey
        if k is False:
            f = self.e.get("file")
            k = self._fkey = (f["path"], f["access"], f["error"], f.get("root"),
                              *f["flags"]) if f else None
        return k  # type: ignore[return-value]

    @property
    def proc(self) -> Process | None:
        if self._proc is False:
            self._proc = self.state.lookup(self.e["process"]["exec_id"])
        return self._proc  # type: ignore[return-value]

    @property
    def parent(self) -> Process | None:
        if self._parent is False:
            par = self.e.get("parent")
            self._parent = self.state.lookup(par["exec_id"]) if par and par.get(
                "exec_id") else None
        return self._parent  # type: ignore[return-value]

    def ancestors(self) -> list[Process]:
        """Parent first, up to the first unknown process (bounded)."""
        if self._ancestors is None:
            out: list[Process] = []
            p = self.parent
            while p is not None and len(out) < 64:
                out.append(p)
                p = self.state.lookup(p.parent_exec_id) if p.parent_exec_id else None
            self._ancestors = out
        return self._ancestors
