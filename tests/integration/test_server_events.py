"""Event ingest under failures: the server killed mid-stream, the network cut
mid-stream, the agent killed mid-send, an acknowledged batch delivered again. Every event
the agent accepted is stored, and stored once. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy
from moray.api.wire import MAX_MESSAGE_BYTES
from tests.helpers.controlplane import (
    AgentProcess,
    ServerProcess,
    TcpProxy,
    policy_yaml,
    wait_for,
)

pytestmark = pytest.mark.integration


def _ok(policy: VerifiedPolicy) -> ApplyResult:
    return ApplyResult(ok=True)


def stored_ids(server: ServerProcess, prefix: str) -> list[str]:
    api, after, ids = server.api(), 0, []
    while True:
        rows = api("GET", "/api/v1/events", params={"after": after, "limit": 10000})
        if not rows:
            return ids
        ids += [r["id"] for r in rows if r["id"].startswith(prefix)]
        after = rows[-1]["seq"]


def assert_exactly_once(server: ServerProcess, prefix: str, expected: set[str],
                        timeout: float = 60) -> None:
    wait_for(lambda: len(stored_ids(server, prefix)) >= len(expected), timeout=timeout,
             interval=0.2, what=f"{len(expected)} events stored")
    ids = stored_ids(server, prefix)
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) == expected, f"lost: {sorted(expected - set(ids))[:10]}"


def metric(server: ServerProcess, name: str) -> float:
    for line in server.api()("GET", "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _client(server: ServerProcess, data: Path, target: str | None = None,
            **kw: object) -> ControlPlaneClient:
    token = server.api().token() if not (data / "identity").exists() else None
    client = ControlPlaneClient(target or server.grpc_target, data, _ok, token=token,
                                ca_pem=server.ca_pem, enroll_server=server.enroll_target,
                                heartbeat_interval=0.5, batch_size=200, **kw)  # type: ignore[arg-type]
    client.start()
    wait_for(lambda: client.identity is not None, what="enrolment")
    return client


def test_server_killed_mid_stream(server: ServerProcess, tmp_path: Path) -> None:
    client = _client(server, tmp_path / "agent")
    total, sent = 3000, threading.Event()

    def produce() -> None:
        for i in range(total):
            assert client.send({"type": "exec", "id": f"k-{i}", "n": i})
            if i % 50 == 0:
                time.sleep(0.01)
        sent.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(stored_ids(server, "k-")) > 300, interval=0.05,
                 what="ingest under way")
        server.kill()                                    # mid-stream, no clean shutdown
        time.sleep(1.0)                                  # the agent keeps spooling
        server.start()
        producer.join()
        assert_exactly_once(server, "k-", {f"k-{i}" for i in range(total)})
        wait_for(lambda: client.spool.stats().records == 0, what="spool drained")
    finally:
        client.stop()


def test_connection_cut_repeatedly(server: ServerProcess, tmp_path: Path) -> None:
    proxy = TcpProxy(server.grpc_port)
    client = _client(server, tmp_path / "agent", target=proxy.target)
    total = 4000
    try:
        for i in range(total):
            client.send({"type": "file", "id": f"c-{i}", "n": i})
            if i % 400 == 399:
                time.sleep(0.1)
                proxy.cut()                              # resets mid-batch, mid-ack
        assert_exactly_once(server, "c-", {f"c-{i}" for i in range(total)})
        assert proxy.cuts == 10
    finally:
        client.stop()
        proxy.close()


def test_acknowledged_batches_replayed_are_stored_once(server: ServerProcess,
                                                       tmp_path: Path) -> None:
    data = tmp_path / "agent"
    client = _client(server, data)
    client.send_many([{"type": "exec", "id": f"r-{i}"} for i in range(500)])
    wait_for(lambda: client.spool.stats().records == 0, what="all acknowledged")
    client.stop()
    # a crash after the server's ack but before the cursor reached the disk: the
    # agent sends everything again
    (data / "spool" / "cursor").write_text("1 0\n")
    before = metric(server, "moray_events_duplicate_total")
    client = _client(server, data)
    try:
        assert client.spool.stats().records == 500
        wait_for(lambda: client.spool.stats().records == 0, what="replay acknowledged")
        assert metric(server, "moray_events_duplicate_total") - before == 500
        assert_exactly_once(server, "r-", {f"r-{i}" for i in range(500)})
    finally:
        client.stop()


def test_agent_killed_mid_send_loses_nothing_it_accepted(server: ServerProcess,
                                                         tmp_path: Path) -> None:
    token = server.api().token()
    data = tmp_path / "agent"
    agent = AgentProcess(data, server, token, events=3000, prefix="a", event_gap=0.0005)
    agent.start()
    try:
        wait_for(lambda: len(agent.accepted()) > 500, what="agent sending")
        agent.kill()                                     # SIGKILL mid-send
        accepted = agent.accepted()
        assert len(accepted) < 3000
        agent = AgentProcess(data, server, None, events=3000, prefix="a").start()
        wait_for(lambda: len(agent.accepted()) == 3000, timeout=60)
        assert_exactly_once(server, "a-", {f"a-{i}" for i in range(3000)})
    finally:
        agent.kill()


def test_agent_killed_mid_push_converges(server: ServerProcess, tmp_path: Path) -> None:
    api = server.api()
    agent = AgentProcess(tmp_path / "agent", server, api.token()).start()
    try:
        api.apply(policy_yaml("p"))
        wait_for(lambda: agent.applied() == [{"name": "p", "version": 1, "removed": False}])
        for deny in ("/a", "/b", "/c"):
            api.apply(policy_yaml("p", deny=deny))
            agent.kill() if deny == "/b" else None       # killed while versions stream in
        api.apply(policy_yaml("q"))
        agent = AgentProcess(tmp_path / "agent", server, None).start()
        wait_for(lambda: {(x["name"], x["version"]) for x in agent.applied()} >= {
            ("p", 4), ("q", 1)}, timeout=5, what="converged to the current versions")
        wait_for(lambda: {n: p["version"] for n, p in api(
            "GET", f"/api/v1/agents/{agent.agent_id()}")["policies"].items()} == {"p": 4, "q": 1},
            what="acks for the current versions stored")
    finally:
        agent.kill()


def test_spool_full_is_counted_and_reported(server: ServerProcess, tmp_path: Path) -> None:
    server.stop()                                        # server away: everything spools
    data = tmp_path / "agent"
    server.start()
    token = server.api().token()
    server.stop()
    client = ControlPlaneClient(server.grpc_target, data, _ok, token=token,
                                ca_pem=server.ca_pem, enroll_server=server.enroll_target,
                                heartbeat_interval=0.3, spool_max_bytes=20_000)
    client.start()
    try:
        accepted = client.send_many([{"type": "exec", "id": f"f-{i}", "pad": "x" * 100}
                                     for i in range(1000)])
        assert 0 < accepted < 1000
        assert client.spool.dropped == 1000 - accepted
        server.start()
        assert_exactly_once(server, "f-", {f"f-{i}" for i in range(accepted)})
        agent_id = wait_for(lambda: client.identity and client.identity.agent_id)
        drops = wait_for(lambda: server.api()("GET", f"/api/v1/agents/{agent_id}")[
            "status"].get("drops", {}).get("spool_full"), what="drops reported")
        assert drops == 1000 - accepted
    finally:
        client.stop()


def test_batches_stay_under_the_message_limit(server: ServerProcess, tmp_path: Path) -> None:
    """More events of 200 KiB than one message may carry (the agent may put 200 in a
    batch): sent as batches of at most BATCH_BYTES, all stored. One batch over the
    receiver's limit was refused, and the agent resent it for ever."""
    count = MAX_MESSAGE_BYTES // (200 << 10) + 20
    client = _client(server, tmp_path / "agent")
    try:
        client.send_many([{"type": "exec", "id": f"big-{i}", "pad": "x" * (200 << 10)}
                          for i in range(count)])
        assert_exactly_once(server, "big-", {f"big-{i}" for i in range(count)})
    finally:
        client.stop()
