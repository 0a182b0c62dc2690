"""``AgentService`` as a gateway serves it to agents: the server's contract, so an agent
cannot tell a gateway from a server (api/proto/moray.proto).

Every call is identified by the client certificate TLS verified against the server's CA
(CN = agent id, SHA-256 of the certificate); the server confirms it (the attach, see
fanout.py) before any policy is sent, and a refusal ends every stream of that agent here.
Events are taken before the confirmation (a server outage must not stop them): they are
stored under the certificate they came with, and the server checks it again on delivery.

- ``PolicyStream``: hello, then the gateway's per-agent diff of its tenant's policies
  (``PolicySession``) after every change the server sends; acks go upstream.
- ``Events``: each batch acknowledged once durable (forwarder.py).
- ``Heartbeat``: answered here; passed upstream (queued while the server is unreachable)
  when the status changed, else at most every ``HEARTBEAT_EVERY`` seconds: an idle fleet's
  heartbeats are most of the server's idle work, and the agent's "connected" comes from
  its attach, not from heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from moray.agent.controlplane.client import HEARTBEAT_EVERY  # the agent's cadence
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.api.wire import MAX_EVENT_BYTES
from moray.controlplane.gateway.fanout import AgentState, PolicySession
from moray.controlplane.gateway.forwarder import Forwarder, SpoolFull
from moray.controlplane.gateway.upstream import Upstream
from moray.controlplane.server.pki import cert_sha256

log = logging.getLogger(__name__)

MAX_BATCH = 10_000   # as the server's


class GatewayAgentService(moray_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    def __init__(self, upstream: Upstream, forwarder: Forwarder) -> None:
        self.upstream, self.forwarder = upstream, forwarder
        self.fanout = upstream.fanout
        self._beats: dict[str, tuple[bytes, float]] = {}   # agent -> (status sent, when)

    async def _identify(self, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        pems = auth.get("x509_pem_cert") or []
        if not names or not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        return names[0].decode(), cert_sha256(pems[0])

    async def _until(self, aw: asyncio.Future[Any], state: AgentState) -> bool:
        """Wait for ``aw`` unless the agent is refused first (False)."""
        refused: asyncio.Future[Any] = asyncio.ensure_future(state.refused.wait())
        try:
            done, _ = await asyncio.wait({aw, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
        return aw in done

    async def PolicyStream(self, request_iterator: AsyncIterator[moray_pb2.PolicyStreamRequest],
                           context: grpc.aio.ServicerContext) -> None:
        agent_id, sha = await self._identify(context)
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
        state = self.fanout.open(agent_id, sha)
        session = PolicySession(self.fanout, state, context, dict(first.hello.versions),
                                marker=first.hello.sync_marker)
        state.wakes.add(session.wake)
        reader = asyncio.ensure_future(session.read_acks())
        # one event wakes the stream: a policy change or a refusal (state.wake) and the
        # agent hanging up (below); no task per wait, so a push to thousands of streams
        # costs one wake-up each
        reader.add_done_callback(lambda _r: session.wake.set())
        try:
            while not reader.done():
                session.wake.clear()
                if state.refused.is_set():
                    reason = state.info.error if state.info else "refused"
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
                await session.push()
                await session.wake.wait()
            await reader
        finally:
            reader.cancel()
            state.wakes.discard(session.wake)
            self.fanout.close(state)
            if agent_id not in self.fanout.agents:
                self._beats.pop(agent_id, None)

    async def Events(self, request_iterator: AsyncIterator[moray_pb2.EventBatch],
                     context: grpc.aio.ServicerContext) -> None:
        agent_id, sha = await self._identify(context)
        state = self.fanout.open(agent_id, sha)
        try:
            while True:
                read = asyncio.ensure_future(context.read())
                if not await self._until(read, state):
                    read.cancel()
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent revoked")
                batch = read.result()
                if batch is grpc.aio.EOF:
                    return
                if len(batch.events) > MAX_BATCH:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"batch larger than {MAX_BATCH} events")
                # what the server would refuse anyway is refused here, so no event can
                # make an upstream batch too large to send (it would be retried forever)
                events = [e for e in batch.events if len(e.payload_json) <= MAX_EVENT_BYTES]
                try:
                    await self.forwarder.submit(agent_id, sha, events)
                except SpoolFull:
                    # the agent keeps the batch and tries the next endpoint
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        "server unreachable and the gateway's spool is full")
                await context.write(moray_pb2.EventAck(
                    batch_id=batch.batch_id, stored=len(events),
                    rejected=len(batch.events) - len(events)))
        finally:
            self.fanout.close(state)

    async def Heartbeat(self, request: moray_pb2.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> moray_pb2.HeartbeatResponse:
        agent_id, sha = await self._identify(context)
        state = self.fanout.agents.get(agent_id)
        if state is not None and state.cert_sha256 == sha:
            status = request.status.SerializeToString(deterministic=True)
            last = self._beats.get(agent_id)
            now = time.monotonic()
            if last is None or last[0] != status or now - last[1] >= HEARTBEAT_EVERY:
                self._beats[agent_id] = (status, now)
                self.upstream.send(moray_pb2.GatewayUp(heartbeat=moray_pb2.GatewayHeartbeat(
                    agent_id=agent_id, status=request.status)))
        return moray_pb2.HeartbeatResponse(server_time_ms=int(time.time() * 1000))
