"""VerdictSource's cache (time-to-live, one round trip for concurrent requests, last answer
while the server is away) and Reporter's bounded queue, against a fake Server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from moray.controlplane.kubeenforcer.config import EnforcerConfig
from moray.controlplane.kubeenforcer.verdicts import (
    Reporter,
    Server,
    ServerUnavailable,
    StoredVerdict,
    VerdictSource,
)

CONFIG = EnforcerConfig(server="http://s", token="t", verdict_ttl=10, unregistered_ttl=1,
                        max_stale=100)
OK = (StoredVerdict("p", True, (), False),)


class FakeServer(Server):
    def __init__(self) -> None:
        self.answers: dict[str, tuple[StoredVerdict, ...]] = {}
        self.calls = 0
        self.down = False
        self.reported: list[list[dict[str, Any]]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def verdicts(self, digest: str) -> tuple[StoredVerdict, ...]:
        self.calls += 1
        await self.gate.wait()
        if self.down:
            raise ServerUnavailable("down")
        return self.answers.get(digest, ())

    async def report(self, reviews: list[dict[str, Any]]) -> None:
        if self.down:
            raise ServerUnavailable("down")
        self.reported.append(reviews)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttl_stale_answers_and_single_flight() -> None:
    async def run() -> None:
        server, clock = FakeServer(), Clock()
        src = VerdictSource(server, CONFIG, clock=clock)
        assert (await src.get("d")).verdicts == ()         # unregistered: kept 1 s
        server.answers["d"] = OK
        assert (await src.get("d")).verdicts == ()
        clock.now = 1.5
        assert (await src.get("d")).verdicts == OK          # asked again
        clock.now = 12
        server.down = True
        got = await src.get("d")                            # away: the last answer
        assert got.verdicts == OK and got.offline
        clock.now = 102
        with pytest.raises(ServerUnavailable):              # too old now
            await src.get("d")
        server.down = False
        server.gate.clear()
        calls = server.calls
        waiting = [asyncio.create_task(src.get("d", fresh=True)) for _ in range(20)]
        await asyncio.sleep(0.01)
        server.gate.set()
        assert all(r.verdicts == OK for r in await asyncio.gather(*waiting))
        assert server.calls == calls + 1                    # one round trip for 20

    asyncio.run(run())


def test_reporter_keeps_what_the_server_missed_and_bounds_it() -> None:
    async def run() -> None:
        server = FakeServer()
        rep = Reporter(server, max_queue=5, batch=2)
        server.down = True
        for i in range(7):
            rep.report({"i": i})
        assert rep.dropped == 2 and [r["i"] for r in rep.queue] == [2, 3, 4, 5, 6]
        assert await rep.flush() is False and len(rep.queue) == 5
        server.down = False
        assert await rep.flush() is True
        assert [r["i"] for batch in server.reported for r in batch] == [2, 3, 4, 5, 6]
        assert rep.sent == 5 and not rep.queue

    asyncio.run(run())


@pytest.mark.parametrize(("status", "body"), [
    (200, b"not json"), (200, b'[{"passed": true}]'), (200, b"[1]"), (503, b"busy"),
    (401, b'{"detail": "invalid token"}')])
def test_odd_server_answers_are_unavailable_not_crashes(status: int, body: bytes) -> None:
    import httpx

    async def run() -> None:
        transport = httpx.MockTransport(lambda _req: httpx.Response(status, content=body))
        client = httpx.AsyncClient(transport=transport, base_url="http://s")
        server = Server(CONFIG, client)
        with pytest.raises(ServerUnavailable):
            await server.verdicts("sha256:" + "0" * 64)
        await server.close()

    asyncio.run(run())
