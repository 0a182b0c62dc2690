"""Stage 2, process tree: a kernel event -> (its process, its parent), tree updated.

Fork, exec and exit records change the tree (agent/enrich/proctree.py); every other
event only looks its process up. Events come in bursts from one process: the last
lookup is reused while no entry has been added or removed since (`ProcessTree.gen`).
"""

from __future__ import annotations

from moray.agent.enrich.proctree import Process, ProcessTree
from moray.agent.events.types import ExecEvent, ExitEvent, ForkEvent, KernelEvent

_CHANGES = frozenset({ForkEvent, ExecEvent, ExitEvent})  # the records that change the tree


class Lineage:
    def __init__(self, tree: ProcessTree) -> None:
        self.tree = tree
        self._last_key: tuple[int, int, int, int] | None = None  # the last lookup's key
        self._last: tuple[Process, Process | None] | None = None

    def lookup(self, ev: KernelEvent) -> tuple[Process, Process | None]:
        tree = self.tree
        k = ev.proc
        t = type(ev)
        if t in _CHANGES:  # one lookup, not three isinstance tests, for the other events
            if t is ForkEvent:
                return tree.on_fork(k), tree.parent_of(k)
            if t is ExecEvent:
                return tree.on_exec(ev), tree.parent_of(k)  # type: ignore[arg-type]
            p = tree.ensure(k)
            tree.on_exit(k)
            return p, tree.parent_of(k)
        if (k.pid, k.start_ns, k.pstart_ns, tree.gen) == self._last_key and \
                self._last is not None:
            # its entries were just looked up and no entry has been added or removed since
            return self._last
        pair = tree.ensure(k), tree.parent_of(k)
        self._last_key, self._last = (k.pid, k.start_ns, k.pstart_ns, tree.gen), pair
        return pair
