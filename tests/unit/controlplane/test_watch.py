"""The change watcher (controlplane/server/watch.py) and the hub on a real SQLite store:
one snapshot per change, shared by subscribers; the safety-net poll finds a change made
behind the server's back; streams are woken by snapshots and agent changes."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from moray.controlplane.server.hub import AgentHub
from moray.controlplane.server.watch import PolicySnapshot, PolicyWatcher
from moray.controlplane.store.cpstore import ControlPlaneStore
from tests.unit.controlplane.conftest import FakeSigner

DOC = {"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "p"},
       "spec": {"exec": {"deny": ["/bin/sh"]}}}


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_one_snapshot_per_change_to_every_subscriber(engine: Engine) -> None:
    store = ControlPlaneStore(engine)

    async def main() -> None:
        reads: list[str] = []
        watcher = PolicyWatcher(store, poll_seconds=0.05, on_query=reads.append)
        seen_a: list[PolicySnapshot] = []
        seen_b: list[PolicySnapshot] = []
        watcher.subscribe(seen_a.append)
        unsubscribe = watcher.subscribe(seen_b.append)
        await watcher.start()
        first = watcher.snapshot                    # the first read is published too
        assert first.serial == 1 and seen_a == seen_b == [first] and first.policies == {}
        store.apply_policy("t1", "p", DOC, author="a", signer=FakeSigner())
        watcher.poke()
        await _until(lambda: len(seen_a) == 2)
        snap = seen_a[1]
        assert seen_b == [first, snap]              # the very same object, read once
        assert snap.tenant("t1")["p"].version == 1 and snap.tenant("t2") == {}
        unsubscribe()
        # a change written by another process: found by the safety-net poll, no poke
        store.apply_policy("t1", "p", {**DOC, "spec": {}}, author="a", signer=FakeSigner())
        await _until(lambda: len(seen_a) == 3)
        assert seen_a[2].tenant("t1")["p"].version == 2 and len(seen_b) == 2
        # pokes without a change publish nothing
        policy_reads = reads.count("policies")
        watcher.poke()
        await _until(lambda: reads.count("policies") > policy_reads)
        await asyncio.sleep(0.1)
        assert len(seen_a) == 3
        # changes(): the current snapshot first, then the next one
        it = watcher.changes().__aiter__()
        assert (await it.__anext__()).serial == seen_a[2].serial
        store.delete_policy("t1", "p", author="a", signer=FakeSigner())
        watcher.poke()
        latest = await asyncio.wait_for(it.__anext__(), 5)
        assert latest.tenant("t1")["p"].removed
        await it.aclose()   # type: ignore[attr-defined]
        await watcher.stop()

    asyncio.run(main())


def test_hub_wakes_streams_on_snapshots_and_agent_changes() -> None:
    async def main() -> None:
        pokes: list[int] = []
        hub = AgentHub(asyncio.get_running_loop(), on_policy_change=lambda: pokes.append(1))
        a1, a2, b = hub.open("a"), hub.open("a"), hub.open("b")
        for h in (a1, a2, b):
            h.refresh = False
        hub.policies_changed(PolicySnapshot(7))
        assert hub.snapshot.serial == 7
        assert all(h.wake.is_set() and not h.refresh for h in (a1, a2, b))
        for h in (a1, a2, b):
            h.wake.clear()
        hub.notify("a")                              # labels changed here
        hub.notify()                                 # a policy stored here
        await asyncio.sleep(0)
        assert a1.refresh and a2.refresh and a1.wake.is_set() and not b.wake.is_set()
        assert pokes == [1]
        hub.agent_changed("b", revoked=True)         # revoked by another server
        assert b.revoked and b.wake.is_set() and not a1.revoked
        hub.agent_changed(None)                      # the listener reconnected
        assert all(h.refresh for h in (a1, a2, b))
        hub.close(a1)
        hub.close(a2)
        assert hub.connected() == ["b"]

    asyncio.run(main())
