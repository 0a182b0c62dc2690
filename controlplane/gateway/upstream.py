"""The gateway's link to the server: one mutual-TLS channel (the gateway's own certificate),
one ``GatewayService.Link`` stream for every agent it carries, and the channel the event
forwarder uses.

State: ``up`` (a link is open), the outgoing queue (attaches, detaches, removal requests,
acks, heartbeats: kept across reconnects, bounded; heartbeats are what is dropped when
full). On every new link the attach of each connected agent is sent first (the server
forgets a gateway's agents when its link ends), then the queue. Reconnects with capped
backoff; a refusal (not a gateway certificate this server trusts) is logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc

from moray.agent.controlplane.client import CHANNEL_OPTIONS as AGENT_CHANNEL_OPTIONS
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.api.wire import MAX_MESSAGE_BYTES
from moray.controlplane.gateway.fanout import Fanout

log = logging.getLogger(__name__)

QUEUE_MAX = 200_000
ACK_BATCH = 1000
# the agent's channel options, and room for policy snapshots of every agent downwards
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *AGENT_CHANNEL_OPTIONS, ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def client_credentials(pki_dir: Path) -> grpc.ChannelCredentials:
    """``gateway.key``/``gateway.pem`` (from ``moray gateway cert``) and ``ca.pem``."""
    return grpc.ssl_channel_credentials(
        root_certificates=(pki_dir / "ca.pem").read_bytes(),
        private_key=(pki_dir / "gateway.key").read_bytes(),
        certificate_chain=(pki_dir / "gateway.pem").read_bytes())


class Upstream:
    def __init__(self, server: str, credentials: grpc.ChannelCredentials,
                 server_name: str | None = None, max_backoff: float = 2.0) -> None:
        options = list(CHANNEL_OPTIONS)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.server = server
        self.channel = grpc.aio.secure_channel(server, credentials, options=options)
        self.fanout = Fanout(self.send)
        self.up = False
        self.links = 0            # links opened so far (tests, metrics)
        self.dropped = 0          # messages dropped on a full queue
        self.max_backoff = max_backoff
        self._queue: asyncio.Queue[moray_pb2.GatewayUp] = asyncio.Queue()

    def send(self, msg: moray_pb2.GatewayUp) -> None:
        """Queue a message for the server (sent now if linked, else after the next link).
        Attaches are not queued while down: every link starts with all of them."""
        if msg.WhichOneof("msg") == "attach" and not self.up:
            return
        if self._queue.qsize() >= QUEUE_MAX and msg.WhichOneof("msg") == "heartbeat":
            self.dropped += 1
            return
        self._queue.put_nowait(msg)

    async def run(self) -> None:
        attempt = 0
        stub = moray_pb2_grpc.GatewayServiceStub(self.channel)
        while True:
            call = stub.Link()
            writer: asyncio.Task[None] | None = None
            try:
                # drop what is queued for the old link but still means something to a new
                # one: acks and removal requests; attaches and detaches are re-derived
                pending = []
                while not self._queue.empty():
                    msg = self._queue.get_nowait()
                    if msg.WhichOneof("msg") in ("ack", "removal", "heartbeat"):
                        pending.append(msg)
                attached = list(self.fanout.agents.values())
                for state in attached:
                    await call.write(Fanout.attach_message(state))
                for msg in pending:
                    await call.write(msg)
                self.up = True
                for state in set(self.fanout.agents.values()) - set(attached):
                    self.send(Fanout.attach_message(state))   # connected meanwhile
                self.links += 1
                log.info("linked to the server", extra={"server": self.server,
                                                        "agents": len(self.fanout.agents)})
                writer = asyncio.create_task(self._write(call))
                async for down in call:
                    attempt = 0
                    self._dispatch(down)
                raise ConnectionError("the server ended the link")
            except (grpc.RpcError, ConnectionError, asyncio.InvalidStateError) as err:
                code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    log.error("the server refused this gateway", extra={
                        "details": err.details() if isinstance(err, grpc.aio.AioRpcError)
                        else str(err)})
                elif self.up or attempt == 0:
                    log.warning("server link lost", extra={"error": str(code or err)})
            finally:
                self.up = False
                if writer is not None:
                    writer.cancel()
                call.cancel()
                self.fanout.link_lost()
            attempt += 1
            await asyncio.sleep(min(self.max_backoff, 0.1 * 2 ** min(attempt, 5)))

    async def _write(self, call: Any) -> None:
        """Send the queue in order; acks queued together go as one message."""
        held: moray_pb2.GatewayUp | None = None
        while True:
            msg = held or await self._queue.get()
            held = None
            if msg.WhichOneof("msg") == "ack":
                acks = [msg.ack]
                while not self._queue.empty() and len(acks) < ACK_BATCH:
                    nxt = self._queue.get_nowait()
                    if nxt.WhichOneof("msg") != "ack":
                        held = nxt
                        break
                    acks.append(nxt.ack)
                if len(acks) > 1:
                    msg = moray_pb2.GatewayUp(acks=moray_pb2.GatewayPolicyAcks(acks=acks))
            await call.write(msg)

    def _dispatch(self, down: moray_pb2.GatewayDown) -> None:
        kind = down.WhichOneof("msg")
        if kind == "policies":
            self.fanout.on_policies(down.policies)
        elif kind == "agent":
            self.fanout.on_agent(down.agent)
        elif kind == "removal":
            self.fanout.on_removal(down.removal)

    async def close(self) -> None:
        await self.channel.close()
