"""Which agents are connected right now, and waking their policy streams.

State owned here (in memory, one server process):
- ``streams``: agent id -> the wake-up events of its open policy streams; added when a
  stream starts, removed when it ends.
- ``revocations``: agent id -> an asyncio.Event per open event stream of that agent, set
  by ``revoke`` (the event stream then ends with PERMISSION_DENIED).
- Changes that wake streams: a policy version stored (``notify``), an agent's labels
  changed (``notify``), an agent revoked (``revoke``: its policy and event streams end
  with PERMISSION_DENIED). Streams also poll the store's policy generation every few seconds,
  so a change made by another server process reaches them too.
``notify`` and ``revoke`` may be called from any thread (REST handlers run in a pool).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StreamHandle:
    agent_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    revoked: bool = False
    refresh: bool = True     # re-read the agent (labels, revocation) before the next push


class AgentHub:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: dict[str, set[StreamHandle]] = {}
        self.revocations: dict[str, set[asyncio.Event]] = {}
        # Bumped on every policy change seen (notify of all agents, or a poll that found
        # the store's generation moved): streams share one policy snapshot per epoch.
        self.epoch = 0

    def open(self, agent_id: str) -> StreamHandle:
        handle = StreamHandle(agent_id)
        self.streams.setdefault(agent_id, set()).add(handle)
        return handle

    def close(self, handle: StreamHandle) -> None:
        handles = self.streams.get(handle.agent_id)
        if handles is not None:
            handles.discard(handle)
            if not handles:
                del self.streams[handle.agent_id]

    def watch_revocation(self, agent_id: str) -> asyncio.Event:
        """An event set when ``agent_id`` is revoked (for its open event streams)."""
        revoked = asyncio.Event()
        self.revocations.setdefault(agent_id, set()).add(revoked)
        return revoked

    def unwatch_revocation(self, agent_id: str, revoked: asyncio.Event) -> None:
        watchers = self.revocations.get(agent_id)
        if watchers is not None:
            watchers.discard(revoked)
            if not watchers:
                del self.revocations[agent_id]

    def connected(self) -> list[str]:
        return sorted(self.streams)

    def _wake_all(self, agent_id: str | None, revoke: bool) -> None:
        targets = ([h for hs in self.streams.values() for h in hs] if agent_id is None
                   else list(self.streams.get(agent_id, ())))
        if agent_id is None:
            self.epoch += 1
        for handle in targets:
            handle.revoked = handle.revoked or revoke
            handle.refresh = handle.refresh or agent_id is not None
            handle.wake.set()

    def notify(self, agent_id: str | None = None) -> None:
        """Wake the policy streams of ``agent_id`` (all agents when None)."""
        self.loop.call_soon_threadsafe(self._wake_all, agent_id, False)

    def _revoke(self, agent_id: str) -> None:
        self._wake_all(agent_id, True)
        for revoked in self.revocations.get(agent_id, ()):
            revoked.set()

    def revoke(self, agent_id: str) -> None:
        self.loop.call_soon_threadsafe(self._revoke, agent_id)
