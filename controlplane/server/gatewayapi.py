"""The gRPC service gateways talk to (``GatewayService`` in api/proto/moray.proto), on the
agent port: mutual TLS, and the client certificate must be a gateway's (``Pki.gateway_name``:
issued by ``moray gateway cert``, its file still under ``pki/gateways/``).

A gateway speaks for the agents it carries, and only for agents whose certificate it
verified: each is *attached* with its certificate's SHA-256, which must match the one the
server issued; a revoked or unknown agent is refused (the gateway ends its streams).

State of one ``Link`` (one per gateway connection, in memory):
- ``attached``: agent id -> (agent record, hub handle). Added by an attach the store
  confirms; removed by a detach, a revocation or the link's end. The hub handle makes the
  agent "connected" and lets ``AgentHub.notify``/``revoke`` wake the link.
- ``sent``: tenant -> serial of the hub's policy snapshot whose set was last sent. A
  tenant's set is sent before its first agent is confirmed and again after every change
  (the server's change watcher publishes a new snapshot and wakes the link through its
  agents' hub handles: controlplane/server/watch.py; no polling).
What the link changes in the store: acknowledgements (through the agent service's one
ack writer), heartbeats, and events (``Events``: stored per agent, under that agent's id
and tenant, after the same certificate check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.controlplane.server.agentapi import AgentServiceImpl, ack_status, event_rows
from moray.controlplane.server.heartbeats import status_of
from moray.controlplane.server.hub import StreamHandle
from moray.controlplane.server.policydoc import selects_host
from moray.controlplane.store.cpstore import (
    AgentRecord,
    EventRow,
    PolicyAckRow,
    PolicyRecord,
)

log = logging.getLogger(__name__)

MAX_GATEWAY_BATCH = 50_000   # events in one gateway batch, all agents together


def selector(document: dict[str, Any]) -> dict[str, str]:
    """``spec.scope.agents.labels`` of a stored document (policydoc.selects_host's rule)."""
    scope = (document.get("spec") or {}).get("scope") or {}
    labels = (scope.get("agents") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def policy_set(tenant: str, policies: dict[str, PolicyRecord]) -> moray_pb2.GatewayDown:
    out = []
    for record in policies.values():
        entry = moray_pb2.GatewayPolicy(name=record.name, version=record.version,
                                        removed=record.removed,
                                        selector=selector(record.document))
        if not record.removed:
            entry.policy.CopyFrom(record.signed())
        out.append(entry)
    return moray_pb2.GatewayDown(policies=moray_pb2.GatewayPolicySet(tenant=tenant,
                                                                      policies=out))


def _agent_down(agent: AgentRecord | None, agent_id: str, error: str = ""
                ) -> moray_pb2.GatewayDown:
    if agent is None or error:
        return moray_pb2.GatewayDown(agent=moray_pb2.GatewayAgent(
            agent_id=agent_id, refused=True, error=error or "unknown agent"))
    return moray_pb2.GatewayDown(agent=moray_pb2.GatewayAgent(
        agent_id=agent.id, tenant=agent.tenant, labels=agent.labels))


def refusal(agent: AgentRecord | None, cert_sha256: str) -> str:
    """Why events or an attach for this agent are not accepted ("" when they are)."""
    if agent is None:
        return "unknown agent"
    if agent.cert_sha256 != cert_sha256:
        return "not the agent's certificate"
    if agent.revoked_at is not None:
        return "agent revoked"
    return ""


class GatewayServiceImpl(moray_pb2_grpc.GatewayServiceServicer):  # type: ignore[misc]
    def __init__(self, agents: AgentServiceImpl) -> None:
        self.agents = agents
        self.store, self.pki, self.hub = agents.store, agents.pki, agents.hub
        self.metrics = agents.metrics
        self.links: dict[str, _Link] = {}     # gateway name -> its current link

    async def _gateway(self, context: grpc.aio.ServicerContext) -> str:
        pems = context.auth_context().get("x509_pem_cert") or []
        name = await asyncio.to_thread(self.pki.gateway_name, pems[0]) if pems else None
        if name is None:
            self.metrics.rpc_refused.labels("not_gateway").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "not a gateway certificate this server issued")
            raise AssertionError("unreachable")
        return name

    async def Link(self, request_iterator: AsyncIterator[moray_pb2.GatewayUp],
                   context: grpc.aio.ServicerContext) -> None:
        name = await self._gateway(context)
        link = _Link(self, name, context)
        self.links[name] = link
        log.info("gateway linked", extra={"gateway": name})
        try:
            await link.run()
        finally:
            if self.links.get(name) is link:
                del self.links[name]
            link.close()
            log.info("gateway link closed", extra={"gateway": name,
                                                   "agents": len(link.attached)})

    async def Events(self, request_iterator: AsyncIterator[moray_pb2.GatewayEventBatch],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[moray_pb2.EventAck]:
        name = await self._gateway(context)
        async for batch in request_iterator:
            if sum(len(a.events) for a in batch.agents) > MAX_GATEWAY_BATCH:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"batch larger than {MAX_GATEWAY_BATCH} events")
            groups, rejected = [], 0
            for a in batch.agents:
                rows, bad = event_rows(a.events, self.metrics)
                groups.append((a.agent_id, a.cert_sha256, rows))
                rejected += bad
            # the agents attached on this gateway's link (records the hub keeps fresh:
            # a revocation marks the handle at once) spare a store read per agent
            link = self.links.get(name)
            known = {} if link is None else {
                aid: rec for aid, (rec, handle) in link.attached.items() if not handle.revoked}
            self.metrics.event_batches_inflight.inc()
            try:
                stored, duplicates = await self._store_events(name, groups, known)
            finally:
                self.metrics.event_batches_inflight.dec()
            self.metrics.events_ingested.inc(stored)
            self.metrics.events_duplicate.inc(duplicates)
            yield moray_pb2.EventAck(batch_id=batch.batch_id, stored=stored,
                                     duplicates=duplicates, rejected=rejected)

    async def _store_events(self, gateway: str,
                            groups: list[tuple[str, str, list[EventRow]]],
                            known: dict[str, AgentRecord]) -> tuple[int, int]:
        """Store a gateway batch's groups of events, each under its agent's id and tenant,
        with the other batches waiting (agentapi's IngestWriter). A group whose agent
        is unknown, revoked or presented another certificate is refused alone: acked all
        the same (the gateway must not resend it for ever), logged and counted."""
        unknown = [a for a, sha, _ in groups if (rec := known.get(a)) is None
                   or rec.cert_sha256 != sha]
        if unknown:
            known = {**known, **await asyncio.to_thread(self._agents, unknown)}
        accepted: list[tuple[str, str, list[EventRow]]] = []
        for agent_id, sha, rows in groups:
            agent = known.get(agent_id)
            why = refusal(agent, sha)
            if why or agent is None:
                self._refused(gateway, agent_id, len(rows), why)
                continue
            accepted.append((agent.id, agent.tenant, rows))
        stored = duplicates = 0
        results = await self.agents.ingest.store_groups(accepted) if accepted else []
        for (agent_id, _, rows), result in zip(accepted, results, strict=True):
            if result is None:   # revoked since the check: nothing of it was stored
                self._refused(gateway, agent_id, len(rows), "agent revoked")
                continue
            stored += result.stored
            duplicates += result.duplicates
        return stored, duplicates

    def _agents(self, ids: list[str]) -> dict[str, AgentRecord]:
        return {a: rec for a in ids if (rec := self.store.agent(a)) is not None}

    def _refused(self, gateway: str, agent_id: str, events: int, why: str) -> None:
        self.metrics.rpc_refused.labels("gateway_events").inc()
        log.warning("gateway events refused", extra={
            "gateway": gateway, "agent_id": agent_id, "events": events, "reason": why})


class _Link:
    """One gateway's link (see the module's docstring)."""

    def __init__(self, service: GatewayServiceImpl, name: str,
                 context: grpc.aio.ServicerContext) -> None:
        self.service, self.name, self.context = service, name, context
        self.agents = service.agents
        self.store, self.hub = service.store, service.hub
        self.attached: dict[str, tuple[AgentRecord, StreamHandle]] = {}
        self.sent: dict[str, int] = {}
        self.wake = asyncio.Event()
        self._write = asyncio.Lock()

    async def send(self, msg: moray_pb2.GatewayDown) -> None:
        async with self._write:
            await self.context.write(msg)

    async def run(self) -> None:
        reader = asyncio.create_task(self.read())
        try:
            while not reader.done():
                waker = asyncio.create_task(self.wake.wait())
                await asyncio.wait({waker, reader}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                self.wake.clear()
                await self.refresh()
            await reader
        finally:
            reader.cancel()

    async def refresh(self) -> None:
        """Send what changed: agents woken by the hub (labels, revocation), then the
        policy set of every tenant whose set predates the hub's snapshot."""
        for agent_id, (_agent, handle) in list(self.attached.items()):
            if not (handle.revoked or handle.refresh):
                continue
            handle.refresh = False
            fresh = await asyncio.to_thread(self.store.agent, agent_id)
            if handle.revoked or fresh is None or fresh.revoked_at is not None:
                self.detach(agent_id)
                await self.send(_agent_down(None, agent_id, "agent revoked"))
                continue
            self.attached[agent_id] = (fresh, handle)
            await self.send_tenant(fresh.tenant)
            await self.send(_agent_down(fresh, agent_id))
        for tenant in {a.tenant for a, _h in self.attached.values()}:
            await self.send_tenant(tenant)

    async def send_tenant(self, tenant: str) -> None:
        snapshot = self.hub.snapshot
        if not snapshot.serial or self.sent.get(tenant) == snapshot.serial:
            return   # serial 0: the watcher has not read the store yet (it wakes us then)
        self.sent[tenant] = snapshot.serial
        await self.send(policy_set(tenant, dict(snapshot.tenant(tenant))))

    async def read(self) -> None:
        while True:
            msg = await self.context.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("msg")
            if kind == "attach":
                await self.attach(msg.attach)
            elif kind == "detach":
                self.detach(msg.detach)
            elif kind == "removal":
                await self.removal(msg.removal)
            elif kind == "ack":
                self.ack(msg.ack)
            elif kind == "acks":
                for ack in msg.acks.acks:
                    self.ack(ack)
            elif kind == "heartbeat":   # queued for the batched writer (heartbeats.py)
                self.heartbeat(msg.heartbeat)

    async def attach(self, req: moray_pb2.GatewayAttach) -> None:
        agent = await asyncio.to_thread(self.store.agent, req.agent_id)
        why = refusal(agent, req.cert_sha256)
        if why or agent is None:
            self.service.metrics.rpc_refused.labels("gateway_attach").inc()
            log.warning("gateway attach refused", extra={
                "gateway": self.name, "agent_id": req.agent_id, "reason": why})
            await self.send(_agent_down(None, req.agent_id, why))
            return
        if agent.id not in self.attached:
            handle = self.hub.open(agent.id)
            handle.wake = self.wake          # any change to this agent wakes the link
            handle.refresh = False
            self.attached[agent.id] = (agent, handle)
            self.service.metrics.agents_connected.set(len(self.hub.streams))
        await self.send_tenant(agent.tenant)
        await self.send(_agent_down(agent, agent.id))

    def detach(self, agent_id: str) -> None:
        entry = self.attached.pop(agent_id, None)
        if entry is not None:
            self.hub.close(entry[1])
            self.service.metrics.agents_connected.set(len(self.hub.streams))

    def close(self) -> None:
        for agent_id in list(self.attached):
            self.detach(agent_id)

    async def removal(self, req: moray_pb2.GatewayRemoval) -> None:
        """Sign a removal for one attached agent, only of a policy that does not select it
        (deleted, relabelled, or never its tenant's): a gateway cannot have a policy
        removed from an agent it still applies to."""
        entry = self.attached.get(req.agent_id)
        answer = moray_pb2.GatewayRemoval(agent_id=req.agent_id, name=req.name,
                                          version=req.version)
        if entry is None:
            answer.error = "agent not attached"
        else:
            agent = entry[0]
            record = self.hub.snapshot.tenant(agent.tenant).get(req.name)
            if record is not None and not record.removed and selects_host(record.document,
                                                                          agent.labels):
                answer.error = "policy still selects this agent"
            else:
                version = max(record.version if record else 0, req.version)
                answer.version = version
                answer.policy.CopyFrom(self.agents.removal(agent, req.name, version))
        if answer.error:
            log.warning("gateway removal refused", extra={
                "gateway": self.name, "agent_id": req.agent_id, "policy": req.name,
                "reason": answer.error})
        await self.send(moray_pb2.GatewayDown(removal=answer))

    def ack(self, msg: moray_pb2.GatewayPolicyAck) -> None:
        if msg.agent_id not in self.attached:
            self.service.metrics.rpc_refused.labels("gateway_ack").inc()
            return
        ack = msg.ack
        status = ack_status(ack.status)
        if status is None:
            self.service.metrics.policy_acks_refused.inc()
            return
        self.service.metrics.policy_acks.labels(status).inc()
        self.agents.record_ack(PolicyAckRow(
            msg.agent_id, ack.name, ack.version, status, ack.error,
            {t.rule: t.tier for t in ack.tiers}, time.time()))

    def heartbeat(self, msg: moray_pb2.GatewayHeartbeat) -> None:
        if msg.agent_id not in self.attached:
            return
        self.agents.heartbeats.record(msg.agent_id, status_of(msg.status, gateway=self.name))
