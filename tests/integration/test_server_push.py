"""Policy push without polling, and the server's operability, on real servers: two
moray-server processes on one real PostgreSQL with simulated mTLS agents on each (a
change applied on either reaches every agent of both, by LISTEN/NOTIFY), idle streams
that cost no database query, a revocation made on one server ending the agent's policy
and event streams on the other, readiness only after every port is bound, a database that
is down at start, private data files, plain HTTP refused off loopback, and event
retention (oldest first, counted)."""

from __future__ import annotations

import queue
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.controlplane.server.watch import LISTENER_NAME
from tests.helpers.controlplane import ROOT, ServerProcess, free_port, policy_yaml, wait_for
from tests.helpers.simagents import SimAgent, SimFleet

pytestmark = pytest.mark.integration

AGENTS_PER_SERVER = 8


def metric(server: ServerProcess, name: str) -> float:
    """The value of one sample of the server's /metrics (``name`` with its labels)."""
    text = server.api()("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in /metrics")


def acked(server: ServerProcess, agents: list[SimAgent], name: str, version: int) -> bool:
    """Every agent's acknowledgement of ``name`` ``version`` is stored."""
    ids = {a.agent_id for a in agents}
    rows = [a for a in server.api()("GET", "/api/v1/agents") if a["id"] in ids]
    return len(rows) == len(ids) and all(
        r["policies"].get(name, {}).get("version") == version for r in rows)


@pytest.fixture
def fleet() -> Iterator[SimFleet]:
    f = SimFleet()
    yield f
    f.close()


def test_two_servers_on_one_postgresql_push_to_every_agent(
        pg_base: str, tmp_path: Path, fleet: SimFleet) -> None:
    import psycopg

    from tests.helpers.postgres import create_database

    url = create_database(pg_base)
    # the safety-net poll is out of the way: changes must come by notification
    args = ("--scan-workers", "0", "--watch-poll-seconds", "600")
    one = ServerProcess(tmp_path / "one", database_url=url, extra_args=args).start()
    # a second server on the same database shares the first one's pki/ (CA, server and
    # policy keys: docs/controlplane.md) and finds the admin token in the database
    (tmp_path / "two").mkdir()
    shutil.copytree(tmp_path / "one" / "pki", tmp_path / "two" / "pki")
    shutil.copy(tmp_path / "one" / "admin.token", tmp_path / "two" / "admin.token")
    two = ServerProcess(tmp_path / "two", database_url=url, extra_args=args).start()
    try:
        a1 = fleet.enroll_many(one, tmp_path / "agents1", AGENTS_PER_SERVER, prefix="x")
        a2 = fleet.enroll_many(two, tmp_path / "agents2", AGENTS_PER_SERVER, prefix="y")
        everyone = a1 + a2
        for srv, mine in ((one, a1), (two, a2)):
            wait_for(lambda s=srv, m=mine: metric(s, "moray_agents_connected") == len(m),
                     timeout=60, what="policy streams open")
            wait_for(lambda s=srv: metric(s, "moray_change_listener_up") == 1,
                     what="change listener up")
        # a change applied on either server reaches every agent of both
        for version, (srv, deny) in enumerate(((one, "/bin/sh"), (two, "/usr/bin/nc"),
                                               (one, "/usr/bin/wget")), start=1):
            srv.api().apply(policy_yaml("everyone", deny=deny))
            wait_for(lambda v=version: acked(one, everyone, "everyone", v), timeout=60,
                     what=f"every agent of both servers acknowledged version {version}")
            assert all(a.versions().get("everyone") == version for a in everyone)
        # the database drops server two's listener: it reconnects, and changes flow again
        with psycopg.connect(url, autocommit=True) as con:
            killed = con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = %s", (LISTENER_NAME,)).fetchall()
        assert len(killed) == 2
        wait_for(lambda: "listening for changes again" in two.log.read_text(), timeout=60,
                 what="listener reconnected")
        two.api().apply(policy_yaml("everyone", deny="/usr/bin/curl"))
        one.api().apply(policy_yaml("everyone", deny="/usr/bin/ssh"))
        wait_for(lambda: acked(one, everyone, "everyone", 5), timeout=60,
                 what="every agent acknowledged version 5 after the reconnect")
        for srv in (one, two):
            wait_for(lambda s=srv: metric(s, "moray_policy_pushes_pending") == 0,
                     what="no push pending once all acked")
            assert metric(srv, "moray_policy_push_latency_seconds_count") >= 5 * len(a1)
        # a label change and a revocation made through server one reach server two's agent
        target = a2[0]
        one.api().apply(policy_yaml("zone-a", labels={"zone": "a"}))
        one.api()("PUT", f"/api/v1/agents/{target.agent_id}/labels", expect=200,
                  json={"labels": {"zone": "a"}})
        wait_for(lambda: target.versions().get("zone-a") == 1, timeout=60,
                 what="relabelled agent on the other server got its policy")
        assert all("zone-a" not in a.versions() for a in everyone if a is not target)
        _revocation_ends_both_streams(one, two, target)
        wait_for(lambda: metric(two, "moray_agents_connected") == len(a2) - 1)
        # the request-duration histograms carry route templates and gRPC methods
        text = one.api()("GET", "/metrics")
        assert 'route="/api/v1/agents/{agent_id}/revoke"' in text
        assert re.search(r'moray_grpc_request_duration_seconds_count\{code="OK",'
                         r'method="Enroll"\} [1-9]', text)
        assert "process_resident_memory_bytes" in text and "process_open_fds" in text
    finally:
        two.stop()
        one.stop()


def _revocation_ends_both_streams(one: ServerProcess, two: ServerProcess,
                                  target: SimAgent) -> None:
    """``target`` streams policies from server two and has an event stream open there, idle
    after one batch: revoked through server one, both end with PERMISSION_DENIED (by the
    notification, not at the event stream's next batch)."""
    batches: queue.Queue[moray_pb2.EventBatch | None] = queue.Queue()
    batches.put(moray_pb2.EventBatch(batch_id=1, events=[moray_pb2.Event(
        id="before-revoke", time_ms=1, type="exec", payload_json=b"{}")]))
    channel = grpc.secure_channel(two.grpc_target, target.identity.channel_credentials())
    try:
        acks = moray_pb2_grpc.AgentServiceStub(channel).Events(iter(batches.get, None),
                                                               timeout=60)
        assert next(acks).stored == 1
        one.api()("POST", f"/api/v1/agents/{target.agent_id}/revoke", expect=200)
        wait_for(lambda: target.ended == grpc.StatusCode.PERMISSION_DENIED, timeout=60,
                 what="revocation on server one ended the policy stream on server two")
        with pytest.raises(grpc.RpcError) as ended:        # waits for the stream's end
            next(acks)
        assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED, ended.value
    finally:
        batches.put(None)
        channel.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_idle_streams_make_no_database_queries(backend: str, tmp_path: Path,
                                               fleet: SimFleet,
                                               request: pytest.FixtureRequest) -> None:
    url = None
    if backend == "postgresql":
        from tests.helpers.postgres import create_database

        url = create_database(request.getfixturevalue("pg_base"))
    server = ServerProcess(tmp_path / "server", database_url=url, extra_args=(
        "--scan-workers", "0", "--scan-poll-seconds", "3600")).start()
    try:
        agents = fleet.enroll_many(server, tmp_path / "agents", 2 * AGENTS_PER_SERVER)
        server.api().apply(policy_yaml("p1"))
        wait_for(lambda: acked(server, agents, "p1", 1), timeout=60, what="acks stored")
        # statements counted by the server's own SQLAlchemy hook; a scrape costs a few
        # (the scan collector), measured by two scrapes in a row
        first = metric(server, "moray_db_statements_total")
        window = time.monotonic() + 3.0
        wait_for(lambda: time.monotonic() > window, timeout=10, interval=0.2)
        second = metric(server, "moray_db_statements_total")
        third = metric(server, "moray_db_statements_total")
        idle = (second - first) - (third - second)
        # the old streams polled twice every 2 s each: 16 streams over 3 s made ~40
        assert idle < len(agents) / 2, (first, second, third)
        assert metric(server, "moray_agents_connected") == len(agents)
    finally:
        server.stop()


def test_database_down_at_start_is_one_line_and_retried(tmp_path: Path) -> None:
    from tests.helpers.postgres import create_database, ensure_postgresql, postgres_server

    if ensure_postgresql() is None:
        pytest.skip("PostgreSQL is not installed and could not be installed")
    port = free_port()
    server = ServerProcess(tmp_path / "server",
                           database_url=f"postgresql://moray@127.0.0.1:{port}/later")
    log = server.log
    ready = _start_detached(server)
    try:
        wait_for(lambda: log.exists() and log.read_text().count("database unreachable") >= 2,
                 timeout=60, what="two retries logged")
        assert server.proc is not None and server.proc.poll() is None   # still trying
        text = log.read_text()
        assert "Traceback" not in text
        line = next(x for x in text.splitlines() if "database unreachable" in x)
        assert "retry_in=" in line and "OperationalError" in line
        with pytest.raises(httpx.TransportError):       # nothing is listening yet
            httpx.get(server.url + "/readyz", timeout=1)
        with postgres_server(port=port) as base:
            create_database(base, "later")
            wait_for(ready, timeout=60, what="server ready once the database is up")
    finally:
        server.stop()


def _start_detached(server: ServerProcess) -> Callable[[], bool]:
    """Start ``server`` without waiting for it; returns its readiness probe."""
    cmd = [sys.executable, "-m", "moray.controlplane.server.main", "--data-dir",
           str(server.data_dir), "--host", "127.0.0.1", "--grpc-port", str(server.grpc_port),
           "--enroll-port", str(server.enroll_port), "--http-port", str(server.http_port)]
    if server.database_url:
        cmd += ["--database-url", server.database_url]
    server.data_dir.mkdir(parents=True, exist_ok=True)
    with open(server.log, "ab") as log:
        server.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    return server._healthy


def test_ready_only_after_every_port_is_bound(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server")
    # the HTTP port is taken: the server must say why, in one line, and never "ready"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.http_port))
        squatter.listen(1)
        _start_detached(server)
        assert server.proc is not None
        code = server.proc.wait(60)
    text = server.log.read_text()
    assert code != 0
    assert "moray-server ready" not in text and "Traceback" not in text, text[-2000:]
    assert f"('127.0.0.1', {server.http_port}): address already in use" in text
    # with its ports free it comes up, and when /readyz says so every port accepts
    server.start()
    try:
        for port in (server.grpc_port, server.enroll_port, server.http_port):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert "moray-server ready" in server.log.read_text()
    finally:
        server.stop()


def test_data_files_are_private_and_plain_http_stays_on_loopback(tmp_path: Path) -> None:
    data = tmp_path / "server"
    data.mkdir()
    (data / "moray.db").touch(mode=0o644)          # left by an older server
    (data / "moray.db").chmod(0o644)
    server = ServerProcess(data).start()
    try:
        server.api().apply(policy_yaml("p1"))      # the WAL exists now
        files = [data / "moray.db", data / "moray.db-wal", data / "moray.db-shm",
                 data / "admin.token", data / "pki" / "ca.key", data / "pki" / "server.key",
                 data / "pki" / "policy.key"]
        for f in files:
            assert f.exists(), f
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f, oct(f.stat().st_mode))
        # another process on the same file (moray token create, a reader) comes and goes:
        # it must not take itself for the last user and delete the server's WAL (the
        # server's own file-mode fix once dropped the server's locks by closing an fd)
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect("
                        "sys.argv[1]); c.execute('select count(*) from cp_policy').fetchall(); "
                        "c.close()", str(data / "moray.db")], check=True, timeout=60)
        assert (data / "moray.db-wal").exists()
        for i in range(2, 6):
            server.api().apply(policy_yaml(f"p{i}"))
        assert "disk I/O error" not in server.log.read_text()
    finally:
        server.stop()
    # the REST API over plain HTTP on a non-loopback address needs an explicit flag
    refused = subprocess.run(
        [sys.executable, "-m", "moray.controlplane.server.main", "--data-dir",
         str(tmp_path / "other"), "--http-host", "0.0.0.0", "--http-port",
         str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert refused.returncode != 0
    assert "--insecure-http" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_retention_drops_the_oldest_events_per_tenant(tmp_path: Path, fleet: SimFleet) -> None:
    server = ServerProcess(tmp_path / "server", extra_args=(
        "--scan-workers", "0", "--retention-interval", "0.3",
        "--event-max-per-tenant", "50", "--event-retention-days", "0")).start()
    try:
        big = fleet.enroll_many(server, tmp_path / "big", 1, prefix="big")[0]
        server.api()("POST", "/api/v1/tenants", expect=201, json={"name": "other"})
        small = fleet.enroll_many(server, tmp_path / "small", 1, prefix="small",
                                  tenant="other")[0]
        payload = b'{"type":"exec"}'
        for b in range(4):     # 80 events in 4 batches: seq order is arrival order
            events = [(f"big-{b * 20 + i:03d}", "exec", payload) for i in range(20)]
            assert fleet.call(big.send_events(events, batch_id=b)) == 20
        assert fleet.call(small.send_events([(f"small-{i}", "exec", payload)
                                             for i in range(10)])) == 10
        wait_for(lambda: metric(server, 'moray_events_dropped_total{reason="size"}') == 30,
                 timeout=60, what="30 events dropped for size")
        api = server.api()
        kept = api("GET", "/api/v1/events", params={"limit": 1000, "tenant": "default"})
        ids = sorted(e["id"] for e in kept if e["agent_id"] == big.agent_id)
        assert ids == [f"big-{i:03d}" for i in range(30, 80)]     # the oldest 30 went
        others = [e for e in api("GET", "/api/v1/events", params={"limit": 1000})
                  if e["agent_id"] == small.agent_id]
        assert len(others) == 10                                   # another tenant's limit
        assert "events dropped by retention" in server.log.read_text()
    finally:
        server.stop()
