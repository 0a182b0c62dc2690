"""What detection remembers between events.

  entrypoints  container cgroup id -> exec id of its entrypoint. Set by the first exec seen
               in a container whose parent is outside it (the runtime's init becoming the
               container's pid 1); for containers that started before the agent, from
               /proc/<pid>/status (NSpid ends in 1). Forgotten when the map outgrows
               `max_containers` (oldest first).
  windows      exec id -> recent (time, address, port) connection attempts, for the
               scanning fields; entries older than `scan_window` seconds are dropped when
               the process connects again, idle processes are swept every minute.
  throttle     (rule, exec id) -> last alert time, for rules with `throttle`.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moray.agent.enrich.proctree import Process, ProcessTree


class State:
    def __init__(self, tree: ProcessTree | None, proc: str = "/proc",
                 scan_window: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_containers: int = 65536) -> None:
        self.tree = tree
        self.proc = proc
        self.scan_window = scan_window
        self.clock = clock
        self.entrypoints: OrderedDict[int, str] = OrderedDict()
        self.max_containers = max_containers
        self.windows: dict[str, _Window] = {}
        self._sweep_at = 0.0
        self.throttle: dict[tuple[str, str], float] = {}
        self._not_init: set[str] = set()

    def lookup(self, exec_id: str | None) -> Process | None:
        if self.tree is None or exec_id is None:
            return None
        return self.tree.get(exec_id)

    # --- container entrypoints --------------------------------------------------------

    def observe(self, e: dict[str, Any], parent: Process | None) -> None:
        """Called for every exec event before rules run, with the process's parent (None:
        not known): records container entrypoints."""
        if e["type"] != "exec":
            return
        if not e.get("container"):
            return
        cg = e["process"]["cgroup_id"]
        if cg in self.entrypoints:
            return
        if parent is None or parent.cgroup_id != cg:
            self._set_entry(cg, e["process"]["exec_id"])

    def _set_entry(self, cg: int, exec_id: str) -> None:
        self.entrypoints[cg] = exec_id
        while len(self.entrypoints) > self.max_containers:
            self.entrypoints.popitem(last=False)

    def _nspid_is_init(self, pid: int) -> bool:
        try:
            with open(f"{self.proc}/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        return line.split()[-1] == "1"
        except OSError:
            pass
        return False

    def is_entrypoint(self, p: Process | None, container: dict[str, Any]) -> bool:
        """p runs the container's entrypoint program: it is the init, or was forked from
        it (or from such a fork) without exec. The walk stays inside the container."""
        cg = container.get("cgroup_id")
        seen = 0
        while p is not None and seen < 64 and p.cgroup_id == cg:
            entry = self.entrypoints.get(cg) if cg is not None else None
            if entry is None and cg is not None and self._nspid_init(p):
                self._set_entry(cg, p.exec_id)
                entry = p.exec_id
            if p.exec_id == entry:
                return True
            if p.version != 0:  # it exec'd something else
                return False
            p = self.lookup(p.parent_exec_id)
            seen += 1
        return False

    def _nspid_init(self, p: Process) -> bool:
        """/proc says p is pid 1 of its pid namespace; a 'no' is remembered per exec id."""
        if p.exec_id in self._not_init:
            return False
        if self._nspid_is_init(p.pid):
            return True
        if len(self._not_init) > 65536:
            self._not_init.clear()
        self._not_init.add(p.exec_id)
        return False

    # --- connection windows (scanning) ------------------------------------------------

    def record_connect(self, e: dict[str, Any]) -> None:
        """O(1) amortised: per-process counters of ports and hosts in the window."""
        net = e.get("network")
        if not net:
            return
        now = self.clock()
        key = e["process"]["exec_id"]
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = _Window()
        w.add(now, net.get("daddr"), net.get("dport"))
        w.expire(now - self.scan_window)
        if now >= self._sweep_at:
            self._sweep_at = now + 60
            cut = now - self.scan_window
            for k in [k for k, q in self.windows.items() if q.last < cut]:
                del self.windows[k]
            for tk in [k for k, t in self.throttle.items() if t < now - 3600]:
                del self.throttle[tk]

    def distinct(self, exec_id: str, kind: str) -> int | None:
        """Distinct ports (kind "ports") or hosts this process reached in the window."""
        w = self.windows.get(exec_id)
        if w is None:
            return 0
        return len(w.ports) if kind == "ports" else len(w.hosts)

    def throttled(self, rule: str, exec_id: str, seconds: float) -> bool:
        if seconds <= 0:
            return False
        now = self.clock()
        key = (rule, exec_id)
        last = self.throttle.get(key)
        if last is not None and now - last < seconds:
            return True
        self.throttle[key] = now
        return False


class _Window:
    """Connection attempts of one process within the scan window, with live counts of
    distinct ports and hosts (bounded: at most `cap` attempts are remembered)."""

    __slots__ = ("hosts", "items", "last", "ports")

    def __init__(self, cap: int = 4096) -> None:
        self.items: deque[tuple[float, str | None, int | None]] = deque()
        self.ports: dict[int | None, int] = {}
        self.hosts: dict[str | None, int] = {}
        self.last = 0.0

    def add(self, t: float, addr: str | None, port: int | None) -> None:
        self.items.append((t, addr, port))
        self.ports[port] = self.ports.get(port, 0) + 1
        self.hosts[addr] = self.hosts.get(addr, 0) + 1
        self.last = t
        if len(self.items) > 4096:
            self._pop()

    def _pop(self) -> None:
        _, addr, port = self.items.popleft()
        n = self.ports[port] - 1
        if n:
            self.ports[port] = n
        else:
            del self.ports[port]
        m = self.hosts[addr] - 1
        if m:
            self.hosts[addr] = m
        else:
            del self.hosts[addr]

    def expire(self, cut: float) -> None:
        items = self.items
        while items and items[0][0] < cut:
            self._pop()
