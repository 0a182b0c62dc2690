"""The gateway's event forwarder with the server unreachable (a closed loopback port):
batches are acknowledged once in its spool, and a spool that cannot take a batch
acknowledges none of it (the agent keeps it)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from moray.agent.controlplane.spool import EventSpool
from moray.api.proto import moray_pb2
from moray.controlplane.gateway.forwarder import Forwarder, SpoolFull


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(n: int, size: int = 10) -> list[moray_pb2.Event]:
    return [moray_pb2.Event(id=f"e{i}", time_ms=1, type="exec", payload_json=b"x" * size)
            for i in range(n)]


def test_unreachable_server_spools_then_full_spool_refuses(tmp_path: Path) -> None:
    async def run() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{_closed_port()}")
        spool = EventSpool(tmp_path / "spool", max_bytes=4000)
        forwarder = Forwarder(channel, spool, timeout=2.0)
        task = asyncio.create_task(forwarder.run())
        try:
            await asyncio.wait_for(forwarder.submit("agent-1", "sha", _events(3)), 10)
            assert spool.stats().records == 3
            with pytest.raises(SpoolFull):
                await asyncio.wait_for(forwarder.submit("agent-1", "sha", _events(50, 200)),
                                       10)
            # the first batch, then the part of the refused one that fitted (sent later;
            # the agent resends the whole batch and the server stores each id once)
            records, _end = spool.read(100)
            assert [(r["a"], r["id"]) for r in records[:3]] == [("agent-1", f"e{i}")
                                                                for i in range(3)]
            assert len(records) < 3 + 50 and spool.stats().dropped > 0
        finally:
            task.cancel()
            await channel.close()
            spool.close()

    asyncio.run(run())
