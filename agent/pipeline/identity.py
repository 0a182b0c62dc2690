"""Stage 3, container identity: an event's cgroup id -> its `container` JSON object.

The resolver (agent/enrich/containers.py) maps cgroup ids to containers; the JSON object
of each is built once and cached per cgroup id while the resolver returns the same
container (at most 4096 entries, then the cache starts over).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from moray.agent.output.metrics import Stats

log = logging.getLogger(__name__)


class Resolver(Protocol):
    """agent/enrich/containers.py ContainerResolver, as the pipeline uses it."""

    def lookup(self, cgroup_id: int, pid: int | None = None,
               retry_now: bool = False) -> Any: ...
    def on_cgroup_created(self, cgroup_id: int, path: str) -> None: ...
    def on_cgroup_removed(self, cgroup_id: int) -> None: ...


class Identity:
    def __init__(self, resolver: Resolver | None, stats: Stats) -> None:
        self.resolver = resolver
        self.stats = stats
        self._containers: dict[int, tuple[Any, dict[str, Any]]] = {}  # cgroup id -> (c, json)

    def container(self, cgroup_id: int, pid: int,
                 retry_now: bool = False) -> dict[str, Any] | None:
        """The `container` object, or None for a host process (or one not identified
        yet). `retry_now`: the event is an exec, maybe a new container's first process,
        whose runtime state may have appeared since the last look (ContainerResolver)."""
        if self.resolver is None or cgroup_id <= 1:
            return None
        try:
            c = self.resolver.lookup(cgroup_id, pid, retry_now)
        except Exception:  # the resolver promises not to raise; count it if it does
            self.stats.enrich_errors += 1
            log.exception("container lookup raised", extra={"cgroup_id": cgroup_id})
            return None
        if c is None:
            return None
        cached = self._containers.get(cgroup_id)
        if cached is not None and cached[0] is c:
            return cached[1]
        if len(self._containers) > 4096:
            self._containers.clear()
        j: dict[str, Any] = c.to_json()
        self._containers[cgroup_id] = (c, j)
        return j
