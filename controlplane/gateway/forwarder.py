"""Events from the gateway's agents to the server (batched across agents), to the gateway's
spool when the server cannot take them, and to SIEM outputs.

An agent's batch is acknowledged to the agent when it is durable: committed by the server
(the usual case: one upstream batch carries whatever every agent sent meanwhile, each
agent's events under its own id), or, when the server does not answer within
``timeout`` or the link is down, appended to the gateway's spool (fsync'd; the agent's
spool code, agent/controlplane/spool.py). While the spool holds anything, new batches go
there too and the spool is drained first, oldest first, committed after the server's ack.
A batch the server stored but whose ack was lost is sent again and counted as duplicates
there, never stored twice (the server stores each event id once per agent). A full spool
acknowledges nothing: ``submit`` raises ``SpoolFull`` and the agent keeps the batch.

What survives what: a gateway killed with an empty spool loses nothing (everything acked
is at the server; unacked batches are resent by the agents to another gateway); what a
killed gateway had spooled (a server outage) is delivered when it starts again on the
same spool directory.

SIEM: each event accepted (stored or spooled) whose type is in ``siem_types`` (default
``alert``; empty: every event) is published to every output (agent/output/siem.py;
non-blocking, drops counted there), at least once: a batch an agent resends after a
gateway failover may reach the SIEM twice.

State: ``spooled`` (records waiting in the spool), ``sent``/``stored``/``duplicates``
counters, the open upstream ``Events`` call (one batch in flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import orjson

from moray.agent.controlplane.spool import EventSpool
from moray.agent.output.siem import AlertOutput
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.api.wire import BATCH_BYTES
from moray.errors import ControlPlaneError

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000    # events per upstream batch
# a call that failed, ended, timed out, or was already finished by grpc (write after end)
SEND_ERRORS = (grpc.RpcError, ConnectionError, TimeoutError, asyncio.InvalidStateError)


class SpoolFull(ControlPlaneError):
    """The server is not taking events and the gateway's spool is full."""


class Forwarder:
    def __init__(self, channel: grpc.aio.Channel, spool: EventSpool,
                 outputs: Sequence[AlertOutput] = (), siem_types: frozenset[str] = frozenset(
                     {"alert"}), timeout: float = 10.0, max_backoff: float = 2.0) -> None:
        self.stub = moray_pb2_grpc.GatewayServiceStub(channel)
        self.spool = spool
        self.outputs = list(outputs)
        self.siem_types = siem_types
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.sent = self.stored = self.duplicates = self.spooled_total = 0
        self._queue: asyncio.Queue[tuple[moray_pb2.AgentEvents, asyncio.Future[None]]] = \
            asyncio.Queue()
        self._call: Any = None
        self._batch_id = 0
        self._retry_at = 0.0
        self._attempt = 0

    async def submit(self, agent_id: str, cert_sha256: str,
                     events: Sequence[moray_pb2.Event]) -> None:
        """Return when the events are durable (stored by the server or spooled here)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((moray_pb2.AgentEvents(
            agent_id=agent_id, cert_sha256=cert_sha256, events=events), future))
        await future

    def spooled(self) -> int:
        return self.spool.stats().records

    async def run(self) -> None:
        while True:
            if self.spooled() and time.monotonic() >= self._retry_at:
                await self._drain_once()
                items = self._take_ready()
            else:
                items = await self._take(0.2 if self.spooled() else None)
            if not items:
                continue
            groups = [g for g, _f in items]
            full = False
            if self.spooled() or time.monotonic() < self._retry_at:
                full = not await self._to_spool(groups)
            else:
                try:
                    await self._send(groups)
                except SEND_ERRORS as err:
                    self._failed(err)
                    full = not await self._to_spool(groups)
            if not full:
                self._publish(groups)
            for _g, future in items:
                if future.done():
                    continue
                if full:   # not acked: the agents keep them in their own spools and resend
                    future.set_exception(SpoolFull("gateway spool full"))
                else:
                    future.set_result(None)

    def _take_ready(self) -> list[tuple[moray_pb2.AgentEvents, asyncio.Future[None]]]:
        items: list[tuple[moray_pb2.AgentEvents, asyncio.Future[None]]] = []
        count = size = 0
        while not self._queue.empty() and count < MAX_EVENTS and size < BATCH_BYTES:
            item = self._queue.get_nowait()
            items.append(item)
            count += len(item[0].events)
            size += item[0].ByteSize()
        return items

    async def _take(self, timeout: float | None
                    ) -> list[tuple[moray_pb2.AgentEvents, asyncio.Future[None]]]:
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return []
        return [first, *self._take_ready()]

    def _failed(self, err: BaseException) -> None:
        self._attempt += 1
        self._retry_at = time.monotonic() + min(self.max_backoff,
                                                0.1 * 2 ** min(self._attempt, 5))
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._attempt == 1:
            log.warning("server not taking events: spooling", extra={"error": str(err)})

    async def _send(self, groups: list[moray_pb2.AgentEvents]) -> None:
        if self._call is None:
            self._call = self.stub.Events()
        self._batch_id += 1
        batch = moray_pb2.GatewayEventBatch(batch_id=self._batch_id, agents=groups)
        await asyncio.wait_for(self._call.write(batch), self.timeout)
        ack = await asyncio.wait_for(self._call.read(), self.timeout)
        if ack is grpc.aio.EOF or ack.batch_id != self._batch_id:
            raise ConnectionError("event stream ended or acked the wrong batch")
        self.sent += sum(len(g.events) for g in groups)
        self.stored += ack.stored
        self.duplicates += ack.duplicates
        if self._attempt:
            log.info("server taking events again")
        self._attempt = 0

    async def _to_spool(self, groups: list[moray_pb2.AgentEvents]) -> bool:
        """Spool the groups; False when the spool did not take all of them (what it took
        is sent later, what it refused is counted there; the agents resend the lot, and
        the server stores each event once)."""
        records = [{"a": g.agent_id, "s": g.cert_sha256, "id": e.id, "t": e.time_ms,
                    "type": e.type, "json": e.payload_json}
                   for g in groups for e in g.events]
        accepted = await asyncio.to_thread(self.spool.append, records)
        self.spooled_total += accepted
        return accepted == len(records)

    async def _drain_once(self) -> None:
        records, end = await asyncio.to_thread(self.spool.read, MAX_EVENTS, None, BATCH_BYTES)
        if not records:
            return
        groups: dict[tuple[str, str], moray_pb2.AgentEvents] = {}
        for r in records:
            key = (str(r["a"]), str(r["s"]))
            group = groups.get(key)
            if group is None:
                group = groups[key] = moray_pb2.AgentEvents(agent_id=key[0],
                                                            cert_sha256=key[1])
            group.events.append(moray_pb2.Event(id=r["id"], time_ms=int(r["t"]),
                                                type=r["type"], payload_json=r["json"]))
        try:
            await self._send(list(groups.values()))
        except SEND_ERRORS as err:
            self._failed(err)
            return
        await asyncio.to_thread(self.spool.commit, end, len(records))

    def _publish(self, groups: list[moray_pb2.AgentEvents]) -> None:
        if not self.outputs:
            return
        for group in groups:
            for event in group.events:
                if self.siem_types and event.type not in self.siem_types:
                    continue
                try:
                    record = orjson.loads(event.payload_json)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    record.setdefault("agent_id", group.agent_id)
                    for out in self.outputs:
                        out.publish(record)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
