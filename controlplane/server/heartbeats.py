"""Agents' heartbeats: the status an agent reports, bounded, and written in batches.

A heartbeat is soft state (the agent's kernel, features, tiers, policy versions, drops,
spool, and when it was last seen): one per agent every 10 s, so 1,000 agents send 100 a
second. Writing each in its own transaction made heartbeats the whole of an idle server's
work. ``HeartbeatWriter`` keeps the latest status per agent and writes what has arrived
every ``FLUSH_EVERY`` seconds (or at ``FLUSH_AT`` agents) in one transaction; a status
replaced before it was written is not written at all. What is lost if the server stops
is at most the last second of statuses, which the next heartbeat brings again. A revoked
agent's heartbeat changes nothing (the store's update skips revoked agents).

Used by the agents' own heartbeats (agentapi) and by those a gateway passes up
(gatewayapi).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from moray.api.proto import moray_pb2
from moray.controlplane.store.cpstore import ControlPlaneStore

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0            # seconds between writes
FLUSH_AT = 2_000             # agents waiting that start a write at once
MAX_STATUS_ENTRIES = 256     # entries kept of each map of a heartbeat's status
MAX_STATUS_TEXT = 256        # characters kept of each string in it


def status_of(st: moray_pb2.AgentStatus, **extra: Any) -> dict[str, Any]:
    """The status stored for an agent's heartbeat (shown to every reader of
    GET /api/v1/agents, so every map and string is bounded)."""
    return {
        "kernel": st.kernel[:MAX_STATUS_TEXT],
        "agent_version": st.agent_version[:MAX_STATUS_TEXT],
        "features": _bounded(st.features), "tiers": _bounded(st.tiers),
        "policy_versions": _bounded(st.policy_versions), "drops": _bounded(st.drops),
        "spool_bytes": st.spool_bytes, "spool_records": st.spool_records,
        "received_at": time.time(), **extra}


def _bounded(entries: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entries.items():
        if len(out) >= MAX_STATUS_ENTRIES:
            break
        out[key[:MAX_STATUS_TEXT]] = value[:MAX_STATUS_TEXT] if isinstance(value, str) \
            else value
    return out


class HeartbeatWriter:
    """The latest status of each agent heard from since the last write, written together."""

    def __init__(self, store: ControlPlaneStore) -> None:
        self.store = store
        self._pending: dict[str, tuple[dict[str, Any], float]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, agent_id: str, status: dict[str, Any]) -> None:
        self._pending[agent_id] = (status, time.time())
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        if len(self._pending) >= FLUSH_AT:
            self._wake.set()

    async def _run(self) -> None:
        while self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await asyncio.to_thread(self.store.heartbeats,
                                    [(a, st, seen) for a, (st, seen) in batch.items()])
        except Exception:   # a failed write must not stop later ones: log and go on
            log.exception("storing heartbeats failed", extra={"count": len(batch)})
