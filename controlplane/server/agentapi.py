"""The gRPC services agents talk to (contract: api/proto/moray.proto).

- ``EnrollmentService`` (enrolment port, server-side TLS): refuses a request over its
  source address's or its token's rate (RESOURCE_EXHAUSTED, before any database work:
  controlplane/server/limits.py ``EnrollLimits``), then spends one use of the token, signs
  the agent's CSR, records the agent (one transaction, controlplane/store/cpstore.py).
- ``AgentServiceImpl`` (agent port, mutual TLS): every call is identified by the client
  certificate's CN (agent id) *and* its SHA-256, checked against the store; unknown or
  revoked agents get UNAUTHENTICATED / PERMISSION_DENIED.

Policy stream, per connection: the agent says which versions it enforces (hello); the
server sends each policy its scope selects whose version differs, and a removal (signed
for this agent only) for each policy the agent has that is deleted or no longer selected;
then it waits for a wake-up (hub: a new policy snapshot from the watcher, or its agent
changed) and repeats; it never polls the store. Every message is acknowledged by
the agent, and the acknowledgement is stored.

Event stream: each batch is committed to the store (ids stored once per agent) before its
ack is sent, so an ack means durable, and a batch without an ack is sent again by the
agent. An event whose payload is not a JSON object or is larger than MAX_EVENT_BYTES is
refused alone (counted in the ack's ``rejected``), the rest of its batch is stored.
Revoking the agent ends its open event streams with PERMISSION_DENIED, and the store
refuses its batches from the moment the revocation commits (``insert_events``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import orjson

from moray.api.imageverdicts import VERDICTS_KIND, VERDICTS_NAME
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.api.wire import MAX_EVENT_BYTES
from moray.controlplane.server.heartbeats import HeartbeatWriter, status_of
from moray.controlplane.server.hub import AgentHub
from moray.controlplane.server.ingest import IngestWriter
from moray.controlplane.server.limits import EnrollLimits
from moray.controlplane.server.metrics import ServerMetrics
from moray.controlplane.server.pki import Pki, PkiError, cert_sha256
from moray.controlplane.server.policydoc import selects_host
from moray.controlplane.store.cpstore import (
    AgentRecord,
    ControlPlaneStore,
    EventRow,
    PolicyAckRow,
    PolicyRecord,
    StoreError,
)
from moray.controlplane.store.eventcols import columns_of

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
MAX_QUEUED_ACKS = 100_000      # acknowledgements waiting for the ack writer


class EnrollmentService(moray_pb2_grpc.EnrollmentServicer):  # type: ignore[misc]
    def __init__(self, store: ControlPlaneStore, pki: Pki, metrics: ServerMetrics,
                 limits: EnrollLimits | None = None) -> None:
        self.store, self.pki, self.metrics = store, pki, metrics
        self.limits = limits or EnrollLimits()

    async def Enroll(self, request: moray_pb2.EnrollRequest,
                     context: grpc.aio.ServicerContext) -> moray_pb2.EnrollResponse:
        refused = self.limits.check(context.peer(), request.token)
        if refused is not None:
            self.metrics.enrollments.labels("limited").inc()
            log.warning("enrolment rate-limited", extra={
                "peer": context.peer(), "hostname": request.hostname[:253],
                "scope": refused.scope})
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused.message())
            raise AssertionError("unreachable")
        issued: dict[str, Any] = {}

        def issue(agent_id: str) -> tuple[str, str]:
            cert = self.pki.issue_agent_cert(request.csr_pem, agent_id)
            issued["pem"] = cert.pem
            return cert.serial, cert.sha256

        try:
            agent = await asyncio.to_thread(
                self.store.enroll_agent, request.token, hostname=request.hostname[:253],
                labels=dict(request.labels), issue=issue, kind=request.kind)
        except (StoreError, PkiError) as err:
            self.metrics.enrollments.labels("refused").inc()
            log.warning("enrolment refused", extra={"hostname": request.hostname[:253],
                                                    "peer": context.peer(),
                                                    "reason": str(err)})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
            raise AssertionError("unreachable") from err
        self.metrics.enrollments.labels("ok").inc()
        log.info("agent enrolled", extra={"agent_id": agent.id, "hostname": agent.hostname,
                                          "kind": agent.kind,
                                          "peer": context.peer(),
                                          "token": agent.enrollment_token_id})
        return moray_pb2.EnrollResponse(
            agent_id=agent.id, certificate_pem=issued["pem"], ca_pem=self.pki.ca_pem,
            policy_public_key=self.pki.policy_key.public_raw,
            policy_key_id=self.pki.policy_key.key_id, labels=agent.labels, tenant=agent.tenant)


class AgentServiceImpl(moray_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    def __init__(self, store: ControlPlaneStore, pki: Pki, hub: AgentHub,
                 metrics: ServerMetrics) -> None:
        self.store, self.pki, self.hub, self.metrics = store, pki, hub, metrics
        self.sessions: set[_PolicySession] = set()
        metrics.policy_pushes_pending.set_function(self._pending_pushes)
        self._acks: asyncio.Queue[PolicyAckRow] = asyncio.Queue()
        self._ack_writer: asyncio.Task[None] | None = None
        self.heartbeats = HeartbeatWriter(store)
        self.ingest = IngestWriter(store)

    def _pending_pushes(self) -> float:
        """Messages sent and not yet acknowledged, over every open stream (read at scrape
        time, from the HTTP thread pool while the loop may open or close a stream)."""
        for _ in range(5):
            try:
                return float(sum(len(s.pending) for s in list(self.sessions)))
            except RuntimeError:     # the set or a dict changed size while we counted
                continue
        return float("nan")

    async def _write_acks(self) -> None:
        """One writer for every stream's acknowledgements: takes what has arrived and
        stores it in one transaction, so 200 agents acking one change cost a few
        transactions, not 200."""
        while True:
            batch = [await self._acks.get()]
            while not self._acks.empty() and len(batch) < 1000:
                batch.append(self._acks.get_nowait())
            try:
                refused = await asyncio.to_thread(self.store.record_acks, batch)
                self.metrics.policy_acks_refused.inc(refused)
            except Exception:   # a failed write must not stop later acks: log and go on
                log.exception("storing policy acknowledgements failed",
                              extra={"count": len(batch)})

    def record_ack(self, row: PolicyAckRow) -> None:
        if self._ack_writer is None or self._ack_writer.done():
            self._ack_writer = asyncio.create_task(self._write_acks())
        if self._acks.qsize() >= MAX_QUEUED_ACKS:   # a flood (acks cost the sender nothing)
            self.metrics.policy_acks_refused.inc()
            return
        self._acks.put_nowait(row)

    async def _identify(self, context: grpc.aio.ServicerContext) -> AgentRecord:
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        pems = auth.get("x509_pem_cert") or []
        if not names or not pems:
            self.metrics.rpc_refused.labels("no_certificate").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        agent_id, pem = names[0].decode(), pems[0]
        cached = self.hub.identity(agent_id, pem)
        if cached is not None:
            return cached
        epoch = self.hub.identity_epoch
        agent = await asyncio.to_thread(self.store.agent, agent_id)
        if agent is None or agent.cert_sha256 != cert_sha256(pem):
            self.metrics.rpc_refused.labels("unknown").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown agent certificate")
            raise AssertionError("unreachable")
        if agent.revoked_at is not None:
            self.metrics.rpc_refused.labels("revoked").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent revoked")
        self.hub.remember(pem, agent, epoch)
        return agent

    # -- policies ------------------------------------------------------------------------

    def removal(self, agent: AgentRecord, name: str, version: int) -> moray_pb2.SignedPolicy:
        payload = moray_pb2.PolicyPayload(
            name=name, tenant=agent.tenant, version=version, removed=True, agent_id=agent.id,
            issued_at_ms=int(time.time() * 1000),
            kind=VERDICTS_KIND if name == VERDICTS_NAME else "").SerializeToString()
        return moray_pb2.SignedPolicy(payload=payload, signature=self.pki.policy_key.sign(payload),
                                      key_id=self.pki.policy_key.key_id)

    async def PolicyStream(self, request_iterator: AsyncIterator[moray_pb2.PolicyStreamRequest],
                           context: grpc.aio.ServicerContext) -> None:
        agent = await self._identify(context)
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
        session = _PolicySession(self, agent, context, dict(first.hello.versions))
        marker = first.hello.sync_marker     # old agents never ask, never receive one
        handle = self.hub.open(agent.id)
        # handle.refresh starts True: the agent is read again now that the handle is
        # registered, so a revocation or relabelling since _identify is not missed
        self.sessions.add(session)
        self.metrics.agents_connected.set(len(self.hub.streams))
        log.info("policy stream open", extra={"agent_id": agent.id, "versions": session.known})
        reader = asyncio.create_task(session.read_acks())
        reader.add_done_callback(lambda _r: handle.wake.set())   # the agent hung up
        fresh: AgentRecord | None = agent
        try:
            while not reader.done():
                handle.wake.clear()
                if handle.refresh:
                    handle.refresh = False
                    fresh = await asyncio.to_thread(self.store.agent, agent.id)
                if handle.revoked or fresh is None or fresh.revoked_at is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent revoked")
                    return
                snapshot = self.hub.snapshot
                if snapshot.serial:          # 0: the watcher has not read the store yet
                    await session.push(fresh, snapshot.tenant(fresh.tenant))
                    if marker:               # asked for by the hello (moray micro)
                        marker = False
                        await context.write(moray_pb2.PolicyStreamResponse(synced=True))
                await handle.wake.wait()
            await reader
        finally:
            reader.cancel()
            self.sessions.discard(session)
            self.hub.close(handle)
            self.metrics.agents_connected.set(len(self.hub.streams))
            log.info("policy stream closed", extra={"agent_id": agent.id})

    # -- events --------------------------------------------------------------------------

    async def Events(self, request_iterator: AsyncIterator[moray_pb2.EventBatch],
                     context: grpc.aio.ServicerContext) -> None:
        agent = await self._identify(context)
        revoked = self.hub.watch_revocation(agent.id)
        stop = asyncio.ensure_future(revoked.wait())
        try:
            while True:
                read = asyncio.ensure_future(context.read())
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    await self._refuse_revoked(context)
                batch = read.result()
                if batch is grpc.aio.EOF:
                    return
                await context.write(await self._store_batch(agent, batch, context))
        finally:
            stop.cancel()
            self.hub.unwatch_revocation(agent.id, revoked)

    async def _store_batch(self, agent: AgentRecord, batch: moray_pb2.EventBatch,
                           context: grpc.aio.ServicerContext) -> moray_pb2.EventAck:
        if len(batch.events) > MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"batch larger than {MAX_BATCH} events")
        rows, rejected = event_rows(batch.events, self.metrics)
        if rejected:
            log.warning("events refused at ingest", extra={
                "agent_id": agent.id, "rejected": rejected, "batch": len(batch.events)})
        self.metrics.event_batches_inflight.inc()
        try:
            result = (await self.ingest.store_groups([(agent.id, agent.tenant, rows)]))[0]
        finally:
            self.metrics.event_batches_inflight.dec()
        if result is None:
            await self._refuse_revoked(context)
            raise AssertionError("unreachable")
        self.metrics.events_ingested.inc(result.stored)
        self.metrics.events_duplicate.inc(result.duplicates)
        return moray_pb2.EventAck(batch_id=batch.batch_id, stored=result.stored,
                                  duplicates=result.duplicates, rejected=rejected)

    async def _refuse_revoked(self, context: grpc.aio.ServicerContext) -> None:
        self.metrics.rpc_refused.labels("revoked").inc()
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent revoked")

    # -- heartbeats ----------------------------------------------------------------------

    async def Heartbeat(self, request: moray_pb2.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> moray_pb2.HeartbeatResponse:
        agent = await self._identify(context)
        self.heartbeats.record(agent.id, status_of(request.status))
        return moray_pb2.HeartbeatResponse(server_time_ms=int(time.time() * 1000))


class _PolicySession:
    """One agent's policy stream: what it enforces (``known``, from its hello and updated
    as messages go out) and what awaits an acknowledgement (``pending``)."""

    def __init__(self, service: AgentServiceImpl, agent: AgentRecord,
                 context: grpc.aio.ServicerContext, known: dict[str, int]) -> None:
        self.service, self.agent, self.context = service, agent, context
        self.metrics, self.store = service.metrics, service.store
        self.known = known
        self.opened = time.time()
        # (name, version) -> when the push became due: the version's creation, or the
        # stream's opening if later (an agent connecting hours after a change has not
        # waited hours), or the send (a removal because the agent's labels changed)
        self.pending: dict[tuple[str, int], float] = {}

    async def push(self, agent: AgentRecord, policies: Mapping[str, PolicyRecord]) -> None:
        """Send what differs between the agent's policies and the ones selecting it."""
        for name, record in policies.items():
            wanted = not record.removed and selects_host(record.document, agent.labels)
            due = max(record.created_at, self.opened)
            if wanted and self.known.get(name) != record.version:
                version, message = record.version, record.signed()
                self.known[name] = record.version
            elif not wanted and name in self.known:
                version = max(record.version, self.known.pop(name))
                message = self.service.removal(agent, name, version)
                due = due if record.removed else time.time()
            else:
                continue
            # pending before the write: the ack may be read before write() returns
            self.pending.setdefault((name, version), due)
            await self.context.write(moray_pb2.PolicyStreamResponse(policy=message))
        for name in [n for n in self.known if n not in policies]:
            # a policy the agent holds that its tenant never had: remove it
            await self.context.write(moray_pb2.PolicyStreamResponse(
                policy=self.service.removal(agent, name, self.known.pop(name))))

    async def read_acks(self) -> None:
        while True:
            msg = await self.context.read()
            if msg is grpc.aio.EOF:
                return
            if msg.HasField("ack"):
                await self._ack(msg.ack)

    async def _ack(self, ack: moray_pb2.PolicyAck) -> None:
        status = ack_status(ack.status)
        if status is None:          # not a status this server knows: refused, counted
            self.metrics.policy_acks_refused.inc()
            return
        ok = status in ("APPLIED", "REMOVED")
        self.metrics.policy_acks.labels(status).inc()
        due = self.pending.pop((ack.name, ack.version), None)
        if due is not None and ok:
            self.metrics.policy_push_latency.observe(max(0.0, time.time() - due))
        if not ok:
            log.warning("agent rejected a policy", extra={
                "agent_id": self.agent.id, "policy": ack.name, "version": ack.version,
                "status": status, "error": ack.error})
        self.service.record_ack(PolicyAckRow(
            self.agent.id, ack.name, ack.version, status, ack.error,
            {t.rule: t.tier for t in ack.tiers}, time.time()))


def event_rows(events: Iterable[moray_pb2.Event], metrics: ServerMetrics
               ) -> tuple[list[EventRow], int]:
    """The rows of a batch that can be stored, and how many were refused (counted by
    reason in ``events_rejected``): the agent's stream and a gateway's share this."""
    rows: list[EventRow] = []
    rejected = 0
    for event in events:
        row = _event_row(event)
        if isinstance(row, str):
            rejected += 1
            metrics.events_rejected.labels(row).inc()
        else:
            rows.append(row)
    return rows, rejected


def _event_row(event: moray_pb2.Event) -> EventRow | str:
    """(id, time_ms, type, payload, filter columns) fitted to the columns, so no event can
    make a batch fail forever (the agent would resend it for ever): an id longer than the
    column is replaced by its SHA-256 (still the same for every delivery), an empty one by
    the payload's, the type is cut to 32 characters. The payload is parsed once, here: to
    check it and to take the console's filter columns (store/eventcols.py). An event that
    cannot be stored as it is (the reason, a metric label, is returned instead): a payload
    larger than MAX_EVENT_BYTES, or one that is not a JSON object in UTF-8."""
    raw = event.payload_json or b"{}"
    if len(raw) > MAX_EVENT_BYTES:
        return "payload_too_large"
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:     # also invalid UTF-8
        return "payload_not_json"
    if not isinstance(parsed, dict):
        return "payload_not_json"
    payload = raw.decode()
    event_id = event.id
    if not event_id or len(event_id) > 64 or "\x00" in event_id:   # PostgreSQL text: no NUL
        event_id = hashlib.sha256((event_id or payload).encode()).hexdigest()
    kind = (event.type.replace("\x00", "") or "unknown")[:32]
    return event_id, event.time_ms, kind, payload, columns_of(kind, parsed)


def ack_status(value: int) -> str | None:
    """The name of an acknowledgement's status; None for a number the protocol does not
    define (proto3 enums are open: a hostile or newer agent can send any)."""
    try:
        return str(moray_pb2.ApplyStatus.Name(value))
    except ValueError:
        return None
