"""moray-gateway between a real moray-server (SQLite) and simulated agents (the agent's own
ControlPlaneClient, real mTLS, no BPF): two gateways, each agent given both endpoints.

Checked: a policy applied (and a relabel, a delete) reaches every agent through the
gateways with the acks stored at the server; alerts (only alerts) reach the gateways'
syslog output; events through a gateway are stored once, under their agent; a gateway
SIGKILLed while agents stream events -> its agents move to the other gateway, nothing
lost or duplicated, and later policies still arrive; the server down -> the gateway takes
and spools the agents' events, server back -> delivered; revoking an agent ends its
streams at the gateway; an agent certificate cannot link as a gateway."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, text

from moray.agent.controlplane import ControlPlaneClient, VerifiedPolicy
from moray.api.imageverdicts import VERDICTS_KIND, VERDICTS_NAME, ImageVerdictList
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.controlplane.store import db
from tests.helpers.controlplane import GatewayProcess, ServerProcess, policy_yaml, wait_for
from tests.integration.test_server_agents import Recorder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def siem() -> Iterator[socket.socket]:
    """A syslog receiver (UDP on loopback) both gateways forward alerts to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, siem: socket.socket
            ) -> Iterator[tuple[ServerProcess, GatewayProcess, GatewayProcess]]:
    base = tmp_path_factory.mktemp("gw")
    server = ServerProcess(base / "server").start()
    syslog = ("--syslog", f"udp://127.0.0.1:{siem.getsockname()[1]}")
    gw1 = GatewayProcess(base / "gw1", server, "gw1", syslog).start()
    gw2 = GatewayProcess(base / "gw2", server, "gw2", syslog).start()
    yield server, gw1, gw2
    for proc in (gw1, gw2, server):
        proc.stop()


def _engine(server: ServerProcess) -> Engine:
    return db.make_engine(db.database_url(server.database_url, server.data_dir))


def _stored(engine: Engine, prefix: str) -> dict[str, str]:
    """event id -> agent id of the stored events whose id starts with ``prefix``."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, agent_id FROM cp_event WHERE id LIKE :p"),
                            {"p": prefix + "%"}).all()
    return {r[0]: r[1] for r in rows}


def _client(server: ServerProcess, data: Path, endpoints: list[str],
            labels: dict[str, str] | None = None) -> tuple[ControlPlaneClient, Recorder]:
    rec = Recorder()
    client = ControlPlaneClient(",".join(endpoints), data, rec,
                                token=server.api().token(labels), ca_pem=server.ca_pem,
                                enroll_server=server.enroll_target, heartbeat_interval=0.5,
                                max_backoff=0.5)
    client.start()
    return client, rec


def _connected(server: ServerProcess, ids: set[str]) -> bool:
    return ids <= {a["id"] for a in server.api()("GET", "/api/v1/agents") if a["connected"]}


def _acked(server: ServerProcess, ids: set[str], name: str, version: int) -> bool:
    agents = {a["id"]: a for a in server.api()("GET", "/api/v1/agents")}
    return all(agents[i]["policies"].get(name, {}).get("version") == version for i in ids)


Clients = list[tuple[ControlPlaneClient, Recorder]]


def test_gateways_carry_policies_events_and_failover(
        cluster: tuple[ServerProcess, GatewayProcess, GatewayProcess], siem: socket.socket,
        tmp_path: Path) -> None:
    server, gw1, gw2 = cluster
    engine = _engine(server)
    clients = []
    for i in range(4):
        first, second = (gw1, gw2) if i % 2 == 0 else (gw2, gw1)
        clients.append(_client(server, tmp_path / f"a{i}", [first.target, second.target],
                               {"zone": "a" if i < 2 else "b"}))
    try:
        wait_for(lambda: all(c.identity for c, _ in clients), timeout=20, what="enrolment")
        ids = {c.identity.agent_id for c, _ in clients if c.identity}
        wait_for(lambda: _connected(server, ids), timeout=20,
                 what="every agent connected through a gateway")
        _policies_fan_out(server, clients, ids)
        _alerts_reach_the_siem(clients, siem)
        _gateway_killed_mid_stream(server, gw1, clients, engine, ids)
        _server_outage_spooled(server, gw2, clients, engine)
        _revocation_ends_streams(server, clients, ids)
        _enrolment_and_health(server, gw2, tmp_path)
    finally:
        for c, _r in clients:
            c.stop()
        engine.dispose()


def _enrolment_and_health(server: ServerProcess, gw: GatewayProcess, tmp_path: Path) -> None:
    """An agent that reaches only the gateway enrols through it (the server spends the
    token) and connects; a spent token is refused through it as by the server; the
    enrolment port serves no agent calls without a certificate; /readyz, /healthz and
    /metrics on the gateway's metrics port."""
    token = server.api().token()
    client = ControlPlaneClient(gw.target, tmp_path / "via-gw", Recorder(), token=token,
                                ca_pem=server.ca_pem, enroll_server=gw.enroll_target,
                                heartbeat_interval=0.5, max_backoff=0.5)
    client.start()
    try:
        wait_for(lambda: client.identity is not None, timeout=20, what="enrolment via gateway")
        assert client.identity is not None
        wait_for(lambda: _connected(server, {client.identity.agent_id}) if client.identity
                 else False, timeout=20, what="the agent enrolled through the gateway connected")
        metrics = gw.http("/metrics").text
        assert "moray_gateway_linked 1.0" in metrics and "process_cpu_seconds_total" in metrics
        assert any(line.startswith("moray_gateway_agents ") and float(line.split()[1]) >= 1
                   for line in metrics.splitlines())
    finally:
        client.stop()
    assert gw.http("/readyz").status_code == 200 and gw.http("/healthz").status_code == 200
    creds = grpc.ssl_channel_credentials(root_certificates=server.ca_pem)
    with grpc.secure_channel(gw.enroll_target, creds) as channel:
        with pytest.raises(grpc.RpcError) as spent:
            moray_pb2_grpc.EnrollmentStub(channel).Enroll(moray_pb2.EnrollRequest(
                token=token, hostname="again"), timeout=10)
        assert spent.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as anonymous:
            moray_pb2_grpc.AgentServiceStub(channel).Heartbeat(
                moray_pb2.HeartbeatRequest(), timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _policies_fan_out(server: ServerProcess, clients: Clients, ids: set[str]) -> None:
    """Policies fanned out by the gateways, acks stored at the server; a relabel brings a
    policy, a delete removes it (removals are signed per agent by the server)."""
    api = server.api()
    api.apply(policy_yaml("everyone"))
    api.apply(policy_yaml("only-a", labels={"zone": "a"}))
    for i, (_c, rec) in enumerate(clients):
        want = {"everyone": 1, "only-a": 1} if i < 2 else {"everyone": 1}
        wait_for(lambda rec=rec, want=want: rec.versions() == want, timeout=10,
                 what=f"agent {i} has {want}")
    wait_for(lambda: _acked(server, ids, "everyone", 1), timeout=10, what="acks stored")
    b_agent = clients[2][0].identity
    assert b_agent is not None
    api("PUT", f"/api/v1/agents/{b_agent.agent_id}/labels", expect=200,
        json={"labels": {"zone": "a"}})
    wait_for(lambda: clients[2][1].versions() == {"everyone": 1, "only-a": 1}, timeout=10,
             what="relabelled agent gets only-a")
    api("DELETE", "/api/v1/policies/everyone", expect=200)
    wait_for(lambda: all("everyone" not in r.versions() for _c, r in clients), timeout=10,
             what="removal reached every agent")


def _alerts_reach_the_siem(clients: Clients, siem: socket.socket) -> None:
    """Alerts (not other events) go from the gateways to their syslog output."""
    for n, (c, _r) in enumerate(clients):
        assert c.send_many([{"type": "exec", "id": f"plain-{n}"},
                            {"type": "alert", "id": f"alert-{n}", "rule": f"gw-siem-{n}",
                             "priority": "high"}]) == 2
    seen: set[str] = set()

    def received() -> bool:
        with contextlib.suppress(TimeoutError):
            data = siem.recv(65536).decode()
            assert "plain-" not in data
            seen.update(f"gw-siem-{n}" for n in range(len(clients)) if f"gw-siem-{n}" in data)
        return len(seen) == len(clients)
    wait_for(received, timeout=15, what="every agent's alert at the SIEM")


def _gateway_killed_mid_stream(server: ServerProcess, gw1: GatewayProcess, clients: Clients,
                               engine: Engine, ids: set[str]) -> None:
    """Agents stream events; gw1 is SIGKILLed; its agents move to gw2: every event stored
    once, under its agent, and a policy applied after the kill reaches everyone."""
    sent: dict[str, str] = {}
    stop = threading.Event()

    def produce(n: int, client: ControlPlaneClient) -> None:
        agent_id = client.identity.agent_id if client.identity else ""
        k = 0
        while not stop.is_set() and k < 5000:
            batch = [{"type": "exec", "id": f"ev-{n}-{k + j}", "n": k + j} for j in range(20)]
            assert client.send_many(batch) == len(batch)
            sent.update({e["id"]: agent_id for e in batch})
            k += 20
            time.sleep(0.02)

    threads = [threading.Thread(target=produce, args=(n, c)) for n, (c, _r) in
               enumerate(clients)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(_stored(engine, "ev-")) > 200, timeout=20,
                 what="events flowing through the gateways")
        gw1.kill()
        server.api().apply(policy_yaml("after-kill"))
        for _c, rec in clients:
            wait_for(lambda rec=rec: rec.versions().get("after-kill") == 1, timeout=15,
                     what="a policy applied after the kill reaches every agent")
    finally:
        stop.set()
        for t in threads:
            t.join()
    wait_for(lambda: len(_stored(engine, "ev-")) >= len(sent), timeout=30,
             what="every event stored")
    assert _stored(engine, "ev-") == sent     # nothing lost, nothing extra, right agent
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cp_event WHERE id LIKE 'ev-%'")
                            ).scalar() == len(sent)
    assert _connected(server, ids)


def _server_outage_spooled(server: ServerProcess, gw2: GatewayProcess, clients: Clients,
                           engine: Engine) -> None:
    """Server down: the gateway acknowledges the agents' events from its spool; server
    back: the spool is delivered."""
    server.kill()
    for n, (c, _r) in enumerate(clients):
        assert c.send_many([{"type": "exec", "id": f"down-{n}-{j}"} for j in range(50)]) == 50
    wait_for(lambda: all(c.spool.stats().records == 0 for c, _r in clients), timeout=30,
             what="the gateway acknowledged the agents' events (spooled)")
    assert any((gw2.data_dir / "spool").glob("seg-*.spool"))
    server.start()
    wait_for(lambda: len(_stored(engine, "down-")) == 200, timeout=30,
             what="spooled events delivered after the server came back")


def _revocation_ends_streams(server: ServerProcess, clients: Clients, ids: set[str]) -> None:
    victim = clients[3][0]
    assert victim.identity is not None
    wait_for(lambda: _connected(server, ids), timeout=20, what="agents relinked")
    server.api()("POST", f"/api/v1/agents/{victim.identity.agent_id}/revoke", expect=200)
    wait_for(lambda: victim.refused is not None, timeout=10,
             what="the revoked agent's stream ended with a refusal")
    assert not _connected(server, {victim.identity.agent_id})


def test_agent_certificate_cannot_link_as_a_gateway(
        cluster: tuple[ServerProcess, GatewayProcess, GatewayProcess], tmp_path: Path) -> None:
    from moray.agent.controlplane.identity import enroll

    server = cluster[0]
    ident = enroll(server.enroll_target, server.api().token(), server.ca_pem, tmp_path / "x")
    with grpc.secure_channel(server.grpc_target, ident.channel_credentials()) as channel:
        stub = moray_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Link(iter([moray_pb2.GatewayUp(attach=moray_pb2.GatewayAttach(
                agent_id=ident.agent_id))]), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Events(iter([moray_pb2.GatewayEventBatch(batch_id=1)]), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_event_over_the_servers_limit_is_refused_at_the_gateway(
        cluster: tuple[ServerProcess, GatewayProcess, GatewayProcess], tmp_path: Path) -> None:
    """An event the server would refuse (payload over MAX_EVENT_BYTES) is refused by the
    gateway, counted in the ack; the rest of its batch is stored under the agent."""
    from moray.agent.controlplane.identity import enroll
    from moray.api.wire import MAX_EVENT_BYTES

    server, gw1, gw2 = cluster
    gateway = next(gw for gw in (gw1, gw2)   # an earlier test kills gw1
                   if gw.proc is not None and gw.proc.poll() is None)
    ident = enroll(server.enroll_target, server.api().token(), server.ca_pem, tmp_path / "x")
    prefix = f"big-{ident.agent_id[:8]}-"
    batch = moray_pb2.EventBatch(batch_id=7, events=[
        moray_pb2.Event(id=prefix + "small", time_ms=1, type="exec", payload_json=b'{"a":1}'),
        moray_pb2.Event(id=prefix + "large", time_ms=1, type="exec",
                        payload_json=b'{"a":"' + b"x" * MAX_EVENT_BYTES + b'"}')])
    with grpc.secure_channel(gateway.target, ident.channel_credentials()) as channel:
        stub = moray_pb2_grpc.AgentServiceStub(channel)
        acks = list(stub.Events(iter([batch]), timeout=30))
    assert [(a.batch_id, a.stored, a.rejected) for a in acks] == [(7, 1, 1)]
    engine = _engine(server)
    wait_for(lambda: prefix + "small" in _stored(engine, prefix), timeout=30,
             what="the small event stored")
    assert _stored(engine, prefix) == {prefix + "small": ident.agent_id}
    engine.dispose()


IMAGES_POLICY = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: gw-image-gate}
spec:
  scope: {containers: {}}
  images: {block: [non-compliant]}
"""


def test_image_verdict_list_passes_through_gateways(
        cluster: tuple[ServerProcess, GatewayProcess, GatewayProcess], tmp_path: Path) -> None:
    """The signed image-verdict list (issue 16) reaches an agent behind a gateway with the
    server's signature (the client verifies it), a new verdict brings a new version, and
    deleting the last policy that uses images removes it."""
    server, gw1, gw2 = cluster
    api = server.api()
    live = [gw.target for gw in (gw1, gw2)   # an earlier test kills gw1
            if gw.proc is not None and gw.proc.poll() is None]
    client, rec = _client(server, tmp_path / "images", live)
    digest, config = "sha256:" + "d" * 64, "sha256:" + "c" * 64
    try:
        wait_for(lambda: client.identity is not None, timeout=20, what="enrolment")
        api("POST", f"/api/v1/images/{digest}/verdicts", expect=200, json={
            "image": "r.test/app:1", "policy": "strict", "passed": False,
            "reasons": ["CVE-1 (high)"], "config_digest": config})
        api.apply(IMAGES_POLICY)

        def the_list() -> VerifiedPolicy | None:
            got = [p for p in rec.applied if p.name == VERDICTS_NAME and not p.removed]
            return got[-1] if got else None

        first = wait_for(the_list, timeout=15, what="the list through the gateway")
        assert first.kind == VERDICTS_KIND
        listed = ImageVerdictList.from_document(first.document)
        found = listed.lookup(config)
        assert found is not None and found.digest == digest
        assert [(v.policy, v.passed, v.reasons) for v in found.verdicts] == [
            ("strict", False, ("CVE-1 (high)",))]
        api("POST", f"/api/v1/images/{digest}/verdicts", expect=200, json={
            "image": "r.test/app:1", "policy": "strict", "passed": True, "reasons": []})
        wait_for(lambda: (the_list() or first).version > first.version, timeout=15,
                 what="the new list through the gateway")
        assert client.identity is not None
        agent_id = client.identity.agent_id
        wait_for(lambda: _acked(server, {agent_id}, VERDICTS_NAME,
                                rec.versions()[VERDICTS_NAME]), timeout=10, what="ack")
        api("DELETE", "/api/v1/policies/gw-image-gate", expect=200)
        wait_for(lambda: VERDICTS_NAME not in rec.versions(), timeout=15,
                 what="the list removed")
    finally:
        client.stop()


def test_a_list_over_grpcs_default_limit_reaches_the_agent(
        cluster: tuple[ServerProcess, GatewayProcess, GatewayProcess], tmp_path: Path) -> None:
    """An image-verdict list of 16,000 images (~5 MB, over gRPC's default 4 MiB) reaches
    an agent through a gateway."""
    import hashlib
    import json

    from sqlalchemy import insert

    from moray.controlplane.store.scanmodels import image_verdict

    server, gw1, gw2 = cluster
    api = server.api()
    engine = _engine(server)
    n = 16_000
    with engine.begin() as conn:
        conn.execute(insert(image_verdict), [{
            "image_digest": "sha256:" + hashlib.sha256(b"big%d" % i).hexdigest(),
            "policy": "strict", "passed": i % 3 != 0, "vulndb_generation": 0,
            "reasons": json.dumps([] if i % 3 else [
                "3 vulnerabilities at high or above (e.g. CVE-2023-32681 in requests)"]),
            "image": f"registry.example.com/team/app-{i}:1.0", "created": 1.0,
            "config_digest": "sha256:" + hashlib.sha256(b"cfg%d" % i).hexdigest()}
            for i in range(n)])
    engine.dispose()
    api("POST", "/api/v1/images/sha256:" + "e" * 64 + "/verdicts", expect=200, json={
        "image": "r.test/last:1", "policy": "strict", "passed": True, "reasons": []})
    api.apply(IMAGES_POLICY.replace("gw-image-gate", "gw-big"))
    live = [gw.target for gw in (gw1, gw2) if gw.proc is not None and gw.proc.poll() is None]
    client, rec = _client(server, tmp_path / "big", live)
    try:
        # (an earlier list may come first: lists are rebuilt at most once per 2 s)
        got = wait_for(lambda: next((p for p in rec.applied if p.name == VERDICTS_NAME
                                     and len(p.signed) > 4 << 20), None), timeout=30,
                       what="the big list through the gateway")
        assert len(ImageVerdictList.from_document(got.document)) > n
    finally:
        client.stop()
        api("DELETE", "/api/v1/policies/gw-big", expect=200)
