"""Simulated agents for control-plane tests and benchmarks: each one is enrolled for real
(its own key and certificate) and keeps its own mutual-TLS gRPC channel and policy
stream, built from moray's protobufs, on one asyncio loop in a background thread, so a
test process can hold many without a thread per agent. A policy message is acknowledged
as APPLIED (REMOVED for a removal) without checking its signature: the agent's own code
is tested elsewhere; here the server is under test.

    fleet = SimFleet()                      # starts the loop thread
    agent = fleet.add(server.grpc_target, identity)   # an enrolled Identity
    agent.versions()                        # {name: version} it holds now
    fleet.send_events(agent, [(id, type, payload), ...])
    fleet.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc

from moray.agent.controlplane.client import CHANNEL_OPTIONS
from moray.agent.controlplane.identity import Identity, enroll
from moray.api.proto import moray_pb2, moray_pb2_grpc

T = TypeVar("T")


class SimAgent:
    def __init__(self, target: str, identity: Identity) -> None:
        self.target = target
        self.identity = identity
        self.held: dict[str, int] = {}
        self.received: list[tuple[str, int, bool, float]] = []   # name, version, removed, at
        self.documents: dict[str, str] = {}     # name -> document_json of the last payload
        self.ended: grpc.StatusCode | None = None
        self.connected = False
        self.channel: grpc.aio.Channel | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    def versions(self) -> dict[str, int]:
        return dict(self.held)

    async def run(self) -> None:
        self.channel = grpc.aio.secure_channel(self.target, self.identity.channel_credentials(),
                                               options=CHANNEL_OPTIONS)
        stub = moray_pb2_grpc.AgentServiceStub(self.channel)
        out: asyncio.Queue[moray_pb2.PolicyStreamRequest | None] = asyncio.Queue()
        out.put_nowait(moray_pb2.PolicyStreamRequest(
            hello=moray_pb2.PolicyHello(versions=self.held)))

        async def requests() -> Any:
            while (msg := await out.get()) is not None:
                yield msg

        call = stub.PolicyStream(requests())
        self.connected = True
        try:
            async for response in call:
                payload = moray_pb2.PolicyPayload.FromString(response.policy.payload)
                if payload.removed:
                    self.held.pop(payload.name, None)
                    self.documents.pop(payload.name, None)
                else:
                    self.held[payload.name] = payload.version
                    self.documents[payload.name] = payload.document_json
                self.received.append((payload.name, payload.version, payload.removed,
                                      time.time()))
                status = moray_pb2.REMOVED if payload.removed else moray_pb2.APPLIED
                out.put_nowait(moray_pb2.PolicyStreamRequest(ack=moray_pb2.PolicyAck(
                    name=payload.name, version=payload.version, status=status)))
        except grpc.aio.AioRpcError as err:
            self.ended = err.code()
        else:
            self.ended = grpc.StatusCode.OK
        finally:
            self.connected = False
            out.put_nowait(None)

    async def send_events(self, events: list[tuple[str, str, bytes]], batch_id: int = 1) -> int:
        """One batch on a fresh Events stream; returns how many the server stored."""
        assert self.channel is not None
        stub = moray_pb2_grpc.AgentServiceStub(self.channel)
        now = int(time.time() * 1000)
        batch = moray_pb2.EventBatch(batch_id=batch_id, events=[
            moray_pb2.Event(id=i, time_ms=now, type=t, payload_json=p) for i, t, p in events])

        async def one() -> Any:
            yield batch

        stored = 0
        async for ack in stub.Events(one()):
            stored += ack.stored
        return stored

    async def heartbeat(self) -> None:
        assert self.channel is not None
        await moray_pb2_grpc.AgentServiceStub(self.channel).Heartbeat(
            moray_pb2.HeartbeatRequest(), timeout=10)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.channel is not None:
            await self.channel.close()


class SimFleet:
    """An asyncio loop in a daemon thread holding any number of ``SimAgent``s."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="sim-agents")
        self.thread.start()
        self.agents: list[SimAgent] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def add(self, target: str, identity: Identity) -> SimAgent:
        agent = SimAgent(target, identity)

        async def start() -> None:
            agent.task = asyncio.get_running_loop().create_task(agent.run())

        self.call(start())
        self.agents.append(agent)
        return agent

    def enroll_many(self, server: Any, work: Path, n: int, *, prefix: str = "a",
                    labels: dict[str, str] | None = None, tenant: str = "default",
                    api: Any = None) -> list[SimAgent]:
        """Enrol ``n`` agents at ``server`` (a tests.helpers.controlplane.ServerProcess;
        tokens from ``api``, default the server's) and open their policy streams."""
        api = api or server.api()
        out = []
        for i in range(n):
            ident = enroll(server.enroll_target, api.token(labels, tenant=tenant),
                           server.ca_pem, work / f"{prefix}{i}")
            out.append(self.add(server.grpc_target, ident))
        return out

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(a.close() for a in self.agents), return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(close_all(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
