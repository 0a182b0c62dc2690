"""Which agents are connected right now, and waking their policy streams.

State owned here (in memory, one server process):
- ``streams``: agent id -> the wake-up handles of its open policy streams; added when a
  stream starts, removed when it ends.
- ``revocations``: agent id -> an asyncio.Event per open event stream of that agent, set
  when the agent is revoked (here or in another server process): the event stream then
  ends with PERMISSION_DENIED.
- ``snapshot``: the policy set every stream pushes from (controlplane/server/watch.py
  publishes it; one per change, shared by all streams).
Changes that wake streams:
- a new policy snapshot (``policies_changed``, from the watcher): every stream;
- an agent's labels changed or it was revoked, here (``notify(agent_id)``,
  ``revoke``) or in another server process (``agent_changed``, from the watcher's
  notifications): that agent's streams re-read the agent, a revoked one ends with
  PERMISSION_DENIED; ``agent_changed(None)`` (the watcher may have missed
  notifications): every stream re-reads its agent.
``notify(None)`` (a policy stored in this process) asks the watcher to re-read now
(``on_policy_change``). Streams do not poll: an idle stream costs no database query.
- ``identities``: agent id -> (its certificate as presented, its record) of the calls
  identified lately, so a heartbeat or a new stream of a known agent costs no query.
  Every agent change above drops the agent's entry (``agent_changed(None)``: all of
  them); an entry read from the store is kept only if no change arrived while it was
  read (``identity_epoch``), so a revocation is never hidden by a read it raced.
``notify`` and ``revoke`` may be called from any thread (REST handlers run in a pool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from moray.controlplane.server.watch import PolicySnapshot
from moray.controlplane.store.cpstore import AgentRecord

log = logging.getLogger(__name__)

MAX_IDENTITIES = 100_000     # cached identities; beyond, the cache starts again


@dataclass(eq=False)
class StreamHandle:
    agent_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    revoked: bool = False
    refresh: bool = True     # re-read the agent (labels, revocation) before the next push


class AgentHub:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_policy_change: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.streams: dict[str, set[StreamHandle]] = {}
        self.revocations: dict[str, set[asyncio.Event]] = {}
        self.snapshot = PolicySnapshot(0)
        self.on_policy_change = on_policy_change
        self.identities: dict[str, tuple[bytes, AgentRecord]] = {}
        self.identity_epoch = 0

    def identity(self, agent_id: str, cert_pem: bytes) -> AgentRecord | None:
        """The cached record of ``agent_id`` if it was identified with this certificate."""
        entry = self.identities.get(agent_id)
        return entry[1] if entry is not None and entry[0] == cert_pem else None

    def remember(self, cert_pem: bytes, agent: AgentRecord, epoch: int) -> None:
        """Cache ``agent`` read from the store when ``identity_epoch`` was ``epoch``."""
        if epoch != self.identity_epoch or agent.revoked_at is not None:
            return
        if len(self.identities) >= MAX_IDENTITIES:
            self.identities.clear()
        self.identities[agent.id] = (cert_pem, agent)

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

    # -- from the watcher (on the loop) --------------------------------------------------

    def policies_changed(self, snapshot: PolicySnapshot) -> None:
        self.snapshot = snapshot
        for handles in self.streams.values():
            for handle in handles:
                handle.wake.set()

    def agent_changed(self, agent_id: str | None, revoked: bool = False) -> None:
        self.identity_epoch += 1
        if agent_id is None:
            self.identities.clear()
        else:
            self.identities.pop(agent_id, None)
        targets = ([h for hs in self.streams.values() for h in hs] if agent_id is None
                   else list(self.streams.get(agent_id, ())))
        for handle in targets:
            handle.revoked = handle.revoked or revoked
            handle.refresh = True
            handle.wake.set()
        if revoked and agent_id is not None:
            for event in self.revocations.get(agent_id, ()):
                event.set()

    # -- from anywhere ---------------------------------------------------------------------

    def _notify(self, agent_id: str | None) -> None:
        if agent_id is not None:
            self.agent_changed(agent_id)
        elif self.on_policy_change is not None:
            self.on_policy_change()

    def notify(self, agent_id: str | None = None) -> None:
        """A change made in this process: the agent ``agent_id``'s labels, or (None) the
        policy set."""
        self.loop.call_soon_threadsafe(self._notify, agent_id)

    def revoke(self, agent_id: str) -> None:
        self.loop.call_soon_threadsafe(self.agent_changed, agent_id, True)
