"""Container identity for a kernel event: cgroup id (+ pid) -> :class:`Container`.

:class:`ContainerResolver` owns a bounded LRU cache cgroup id -> result (a Container, or
None for a host process).  It changes on:

1. a lookup miss: resolve the cgroup path (:class:`~agent.enrich.cgroups.CgroupIndex`),
   parse it (:func:`~agent.enrich.runtimes.parse_cgroup_path`, else the runc state index),
   read the runtime's state files and the netns, and cache the result;
2. a lookup of an *incomplete* entry (runtime id known but its state file not written yet,
   netns not read yet, or a cgroup announced by a mkdir event that looked like a host
   cgroup): retried at most every ``retry_interval`` until ``retry_window`` after the
   first try, then frozen;
3. :meth:`on_cgroup_created`: the path goes into the index (the entry is made on lookup);
4. :meth:`on_cgroup_removed`: the entry and the index row are dropped.

``lookup`` never raises: errors are counted in ``errors`` and logged with context.  A
first lookup reads a few small files (well under a millisecond each; the netns read is
~2-5 ms once per namespace); later lookups are dict hits.  Not thread-safe: call it from
the enrichment thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moray.agent.enrich.cgroups import CgroupIndex, find_cgroup2_mount, normalize
from moray.agent.enrich.netns import Interfaces, NetnsError, NetnsReader
from moray.agent.enrich.runtimes import (
    DEFAULT_CONTAINERD_NAMESPACES,
    CgroupMatch,
    ContainerInfo,
    ContainerRuntime,
    RuncRuntime,
    Runtime,
    default_runtimes,
    parse_cgroup_path,
)

log = logging.getLogger(__name__)

# Readers asked, in order, when the cgroup path does not name the runtime.
_PROBE_ORDER = (Runtime.CONTAINERD, Runtime.CRIO, Runtime.DOCKER, Runtime.PODMAN,
                Runtime.RUNC)


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str | None
    runtime: str
    image: str | None
    image_digest: str | None
    pod_namespace: str | None
    pod_name: str | None
    pod_uid: str | None
    cgroup_id: int
    cgroup_path: str
    netns: int | None
    interfaces: Interfaces
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    pod_labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        pod = None
        if self.pod_uid or self.pod_name or self.pod_namespace or self.pod_labels:
            pod = {"namespace": self.pod_namespace, "name": self.pod_name, "uid": self.pod_uid,
                   "labels": dict(self.pod_labels)}
        netns = None
        if self.netns is not None:
            netns = {"inode": self.netns,
                     "interfaces": [{"name": name, "addresses": list(addrs)}
                                    for name, addrs in self.interfaces]}
        return {"id": self.id, "name": self.name, "runtime": self.runtime,
                "image": self.image, "image_digest": self.image_digest, "pod": pod,
                "cgroup_id": self.cgroup_id, "netns": netns, "labels": dict(self.labels)}


@dataclass(slots=True)
class _Entry:
    container: Container | None
    first_try: float
    last_try: float
    complete: bool
    urgent: int = 0  # immediate re-reads spent on it (lookup's retry_now)


class ContainerResolver:
    """cgroup id (+ pid) -> Container, or None for host processes."""

    def __init__(
        self,
        cgroups: CgroupIndex,
        runtimes: Sequence[ContainerRuntime],
        netns: NetnsReader | None = None,
        *,
        max_entries: int = 4096,
        retry_window: float = 5.0,
        retry_interval: float = 0.05,
        containerd_namespaces: frozenset[str] = DEFAULT_CONTAINERD_NAMESPACES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cgroups = cgroups
        self._runtimes = {r.kind: r for r in runtimes}
        self._runc = next((r for r in runtimes if isinstance(r, RuncRuntime)), None)
        self.netns = netns
        self.max_entries = max_entries
        self.retry_window = retry_window
        self.retry_interval = retry_interval
        self._namespaces = containerd_namespaces
        self._clock = clock
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        # one resolver serves the event pipeline and the policy engine (two threads)
        self._lock = threading.RLock()
        self._created: dict[int, float] = {}  # cgroup id -> mkdir time, within the window
        self.errors = 0
        self.misses = 0

    @classmethod
    def for_host(cls, proc: str = "/proc", host_root: str = "/",
                 cgroup_root: str | None = None, **kwargs: Any) -> ContainerResolver:
        """Resolver with the default readers; scans the cgroup v2 mount once."""
        root = cgroup_root or find_cgroup2_mount(proc) or "/sys/fs/cgroup"
        index = CgroupIndex(root, proc)
        index.scan()
        return cls(index, default_runtimes(proc, host_root), NetnsReader(proc), **kwargs)

    def start_watch(self) -> None:
        """Read runtime state as it is written (runc's inotify watcher), so containers
        that live less than the pipeline's lag are still named."""
        if self._runc is not None:
            self._runc.start_watch()

    def stop_watch(self) -> None:
        if self._runc is not None:
            self._runc.stop_watch()

    # ----------------------------------------------------------------- kernel events

    def on_cgroup_created(self, cgroup_id: int, path: str) -> None:
        with self._lock:
            self.cgroups.add(cgroup_id, path)
            self._cache.pop(cgroup_id, None)  # an id is an inode: never trust an old entry
            self._created[cgroup_id] = self._clock()
            if len(self._created) > self.max_entries:
                self._created.pop(next(iter(self._created)))

    def on_cgroup_removed(self, cgroup_id: int) -> None:
        with self._lock:
            self.cgroups.remove(cgroup_id)
            self._cache.pop(cgroup_id, None)
            self._created.pop(cgroup_id, None)

    # ----------------------------------------------------------------- lookup

    def lookup(self, cgroup_id: int, pid: int | None = None,
               retry_now: bool = False) -> Container | None:
        """Container of the task in cgroup *cgroup_id* (None: a host process).

        retry_now (an exec): a young cgroup not matched to a container yet is re-read even
        within retry_interval, at most URGENT_MAX times per cgroup. The runtime writes its
        state between the cgroup's first events (runc init) and the container process's
        exec, often well under retry_interval apart; the bound keeps an exec storm in a new
        *host* cgroup from re-scanning runtime state on every exec."""
        with self._lock:
            return self._lookup(cgroup_id, pid, retry_now)

    URGENT_MAX = 4

    def _lookup(self, cgroup_id: int, pid: int | None, retry_now: bool = False
                ) -> Container | None:
        entry = self._cache.get(cgroup_id)
        urgent = 0
        if entry is not None:
            self._cache.move_to_end(cgroup_id)
            if entry.complete:
                return entry.container
            now = self._clock()
            if now - entry.last_try < self.retry_interval:
                if not (retry_now and entry.container is None
                        and entry.urgent < self.URGENT_MAX):
                    return entry.container
                urgent = entry.urgent + 1
            else:
                urgent = entry.urgent
        self.misses += 1
        try:
            return self._resolve(cgroup_id, pid, entry, urgent)
        except Exception:  # the event path must go on: counted and logged
            self.errors += 1
            log.exception("container lookup failed", extra={"cgroup_id": cgroup_id,
                                                           "pid": pid})
            return entry.container if entry is not None else None

    def _resolve(self, cgroup_id: int, pid: int | None, old: _Entry | None,
                 urgent: int = 0) -> Container | None:
        now = self._clock()
        first = old.first_try if old is not None else now
        within = now - first < self.retry_window
        path = self.cgroups.resolve(cgroup_id, pid)
        match = self._match(path) if path is not None else None
        if match is None and old is not None and old.container is not None:
            # found before, gone now (the runtime removed its state when the container
            # exited, before its last events were enriched): keep what was found
            self._store(cgroup_id, _Entry(old.container, first, now, complete=True))
            return old.container
        if match is None:
            # runc writes state.json only after the container's cgroup exists: a cgroup
            # that looks like the host's may still turn out to be a container.
            created = self._created.get(cgroup_id)
            retry = path != "/" or (created is not None and now - created < self.retry_window)
            self._store(cgroup_id, _Entry(None, first, now, complete=not (retry and within),
                                          urgent=urgent))
            return None
        info = self._inspect(match)
        prev = old.container if old is not None else None
        netns = self._netns(pid, prev)
        container = self._build(cgroup_id, path or "/", match, info, netns)
        complete = (info is not None and netns[0] is not None) or not within
        self._store(cgroup_id, _Entry(container, first, now, complete))
        return container

    def _match(self, path: str) -> CgroupMatch | None:
        match = parse_cgroup_path(path, self._namespaces)
        if match is None and self._runc is not None:
            match = self._runc.find(normalize(path))
        return match

    def _inspect(self, match: CgroupMatch) -> ContainerInfo | None:
        kinds = (match.runtime,) if match.runtime is not None else _PROBE_ORDER
        for kind in kinds:
            reader = self._runtimes.get(kind)
            info = reader.inspect(match) if reader is not None else None
            if info is not None:
                return info
        return None

    def _netns(self, pid: int | None,
               prev: Container | None) -> tuple[int | None, Interfaces]:
        if prev is not None and prev.netns is not None:
            return prev.netns, prev.interfaces
        if pid is None or self.netns is None:
            return None, ()
        try:
            info = self.netns.read(pid)
        except NetnsError as err:
            log.debug("netns unreadable", extra={"pid": pid, "error": str(err)})
            return self.netns.inode(pid), ()
        return (info.inode, info.interfaces) if info is not None else (None, ())

    @staticmethod
    def _build(cgroup_id: int, path: str, match: CgroupMatch, info: ContainerInfo | None,
               netns: tuple[int | None, Interfaces]) -> Container:
        if info is None:
            info = ContainerInfo(match.runtime or Runtime.UNKNOWN)
        return Container(
            id=match.container_id, name=info.name or match.container_id,
            runtime=str(info.runtime), image=info.image, image_digest=info.image_digest,
            pod_namespace=info.pod_namespace, pod_name=info.pod_name,
            pod_uid=info.pod_uid or match.pod_uid, cgroup_id=cgroup_id,
            cgroup_path=path, netns=netns[0], interfaces=netns[1],
            labels=dict(info.labels), pod_labels=dict(info.pod_labels))

    def _store(self, cgroup_id: int, entry: _Entry) -> None:
        self._cache[cgroup_id] = entry
        self._cache.move_to_end(cgroup_id)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)
