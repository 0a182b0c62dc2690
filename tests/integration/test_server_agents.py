"""moray-server and agents over real sockets on loopback: enrolment, mTLS, signed policy
push to the agents a policy selects, acknowledgements, heartbeats, revocation, tampering.
The same tests run against SQLite and against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, text

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy
from moray.agent.controlplane.identity import EnrollmentError, enroll
from moray.api.proto import moray_pb2, moray_pb2_grpc
from moray.controlplane.store import db
from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for

pytestmark = pytest.mark.integration


class Recorder:
    """A fake enforcement pipeline: records what it was asked to apply."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.applied: list[VerifiedPolicy] = []
        self.at: list[float] = []
        self.fail = fail or set()
        self.changed = threading.Event()

    def __call__(self, policy: VerifiedPolicy) -> ApplyResult:
        if policy.name in self.fail:
            return ApplyResult(ok=False, error="pipeline says no")
        self.applied.append(policy)
        self.at.append(time.monotonic())
        self.changed.set()
        return ApplyResult(ok=True, tiers={"exec.deny[0]": "sigkill"})

    def versions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.applied:
            if p.removed:
                out.pop(p.name, None)
            else:
                out[p.name] = p.version
        return out


def _db(server: ServerProcess) -> Engine:
    return db.make_engine(db.database_url(server.database_url, server.data_dir))


def make_client(server: ServerProcess, data: Path, labels: dict[str, str] | None = None,
                recorder: Recorder | None = None, **kw: Any
                ) -> tuple[ControlPlaneClient, Recorder]:
    rec = recorder or Recorder()
    token = server.api().token(labels)
    client = ControlPlaneClient(server.grpc_target, data, rec, token=token,
                                ca_pem=server.ca_pem, enroll_server=server.enroll_target,
                                heartbeat_interval=0.3, **kw)
    client.start()
    wait_for(lambda: client.identity is not None, what="enrolment")
    wait_for(lambda: client.identity.agent_id in [a["id"] for a in server.api()(
        "GET", "/api/v1/agents") if a["connected"]], what="policy stream")
    return client, rec


def test_push_reaches_selected_agents_within_a_second(server: ServerProcess,
                                                      tmp_path: Path) -> None:
    a, rec_a = make_client(server, tmp_path / "a", {"zone": "a"})
    b, rec_b = make_client(server, tmp_path / "b", {"zone": "b"})
    try:
        api = server.api()
        start = time.monotonic()
        api.apply(policy_yaml("only-a", labels={"zone": "a"}))
        api.apply(policy_yaml("everyone"))
        wait_for(lambda: rec_a.versions() == {"only-a": 1, "everyone": 1}, timeout=1.0,
                 what="agent a has both policies within 1 s")
        assert time.monotonic() - start < 1.0
        wait_for(lambda: rec_b.versions() == {"everyone": 1}, timeout=1.0)
        time.sleep(0.3)
        assert "only-a" not in {p.name for p in rec_b.applied}   # never reached b
        # acknowledgements with the version and tier per rule are stored
        agents = {x["id"]: x for x in api("GET", "/api/v1/agents")}
        ack = wait_for(lambda: api("GET", f"/api/v1/agents/{a.identity.agent_id}")[
            "policies"].get("only-a"), what="ack stored")
        assert ack["version"] == 1 and ack["status"] == "APPLIED"
        assert ack["tiers"] == {"exec.deny[0]": "sigkill"}
        assert set(agents) == {a.identity.agent_id, b.identity.agent_id}
        # a new version, then a rollback, then a delete: each pushed
        api.apply(policy_yaml("only-a", labels={"zone": "a"}, deny="/usr/bin/nc"))
        wait_for(lambda: rec_a.versions().get("only-a") == 2, timeout=1.0)
        api("POST", "/api/v1/policies/only-a/rollback", expect=200, json={"version": 1})
        wait_for(lambda: rec_a.versions().get("only-a") == 3, timeout=1.0)
        assert rec_a.applied[-1].document["spec"]["exec"]["deny"] == ["/bin/sh"]
        api("DELETE", "/api/v1/policies/everyone", expect=200)
        wait_for(lambda: "everyone" not in rec_a.versions()
                 and "everyone" not in rec_b.versions(), timeout=1.0)
        # relabelling b into zone a brings it the policy; labelling it out removes it
        api("PUT", f"/api/v1/agents/{b.identity.agent_id}/labels", expect=200,
            json={"labels": {"zone": "a"}})
        wait_for(lambda: rec_b.versions() == {"only-a": 3}, timeout=1.0)
        api("PUT", f"/api/v1/agents/{b.identity.agent_id}/labels", expect=200,
            json={"labels": {"zone": "c"}})
        wait_for(lambda: rec_b.versions() == {}, timeout=1.0)
        # heartbeats carry the agent's status
        status = wait_for(lambda: (s := api("GET", f"/api/v1/agents/{a.identity.agent_id}")[
            "status"]).get("policy_versions") == {"only-a": 3} and s, what="heartbeat")
        assert status["drops"]["spool_full"] == 0 and status["kernel"]
        metrics = api("GET", "/metrics")
        assert "moray_agents_connected 2.0" in metrics
        assert "moray_policy_push_latency_seconds_count" in metrics
    finally:
        a.stop()
        b.stop()


def test_restart_enforces_cached_policies_with_server_down(server: ServerProcess,
                                                           tmp_path: Path) -> None:
    client, rec = make_client(server, tmp_path / "a")
    server.api().apply(policy_yaml("p1"))
    wait_for(lambda: rec.versions() == {"p1": 1}, timeout=2)
    client.stop()
    server.kill()
    again = Recorder()
    offline = ControlPlaneClient(server.grpc_target, tmp_path / "a", again,
                                 heartbeat_interval=0.3)
    offline.start()     # server is down: the cached, re-verified policy is applied anyway
    try:
        assert again.versions() == {"p1": 1}
        assert again.applied[0].document["spec"]["exec"]["deny"] == ["/bin/sh"]
    finally:
        offline.stop()


def test_tampered_policy_is_rejected_and_reported(server: ServerProcess,
                                                  tmp_path: Path) -> None:
    first, rec = make_client(server, tmp_path / "a")
    api = server.api()
    api.apply(policy_yaml("p1"))
    wait_for(lambda: rec.versions() == {"p1": 1}, timeout=2)
    first.stop()                          # the agent is away while version 2 is written
    api.apply(policy_yaml("p1", deny="/usr/bin/nc"))
    server.kill()
    # someone with write access to the database edits version 2's document
    with _db(server).begin() as con:
        payload = con.execute(text("SELECT payload FROM cp_policy_version WHERE version=2")
                              ).scalar_one()
        forged = bytes(payload).replace(b"/usr/bin/nc", b"/usr/bin/xx")
        con.execute(text("UPDATE cp_policy_version SET payload=:p WHERE version=2"),
                    {"p": forged})
    server.start()
    rec = Recorder()
    client = ControlPlaneClient(server.grpc_target, tmp_path / "a", rec, heartbeat_interval=0.3)
    client.start()
    try:
        assert rec.versions() == {"p1": 1}                 # from the cache, re-verified
        agent_id = client.identity.agent_id
        ack = wait_for(lambda: api("GET", f"/api/v1/agents/{agent_id}")["policies"].get(
            "p1", {}).get("status") == "REJECTED_SIGNATURE" and api(
            "GET", f"/api/v1/agents/{agent_id}")["policies"]["p1"], timeout=10,
            what="rejection reported")
        assert ack["version"] == 2 and "signature" in ack["error"]
        assert rec.versions() == {"p1": 1}                 # still enforcing the verified one
        assert client.rejected == 1
        audit = api("GET", "/api/v1/audit", params={"limit": 1000})
        assert any(x["action"] == "policy.reject" for x in audit)
        events = wait_for(lambda: api("GET", "/api/v1/events",
                                      params={"type": "policy_rejected"}), timeout=10)
        assert events[0]["event"]["status"] == "REJECTED_SIGNATURE"
    finally:
        client.stop()


def test_replayed_older_version_is_rejected(server: ServerProcess, tmp_path: Path) -> None:
    client, rec = make_client(server, tmp_path / "a")
    try:
        api = server.api()
        api.apply(policy_yaml("p1"))
        wait_for(lambda: rec.versions() == {"p1": 1}, timeout=2)
        with _db(server).connect() as con:
            row = con.execute(text("SELECT payload, signature, key_id FROM cp_policy_version "
                                   "WHERE version=1")).one()
        old = moray_pb2.SignedPolicy(payload=bytes(row[0]), signature=bytes(row[1]),
                                     key_id=row[2])
        api.apply(policy_yaml("p1", deny="/usr/bin/nc"))
        wait_for(lambda: client.cache.floors.get("p1") == 2, timeout=2, what="v2 recorded")
        ack = client.handle_policy(old)      # a network peer replays the genuine v1
        assert ack.status == moray_pb2.REJECTED_REPLAY
        assert rec.versions() == {"p1": 2}
    finally:
        client.stop()


def _client_cert(ca_key_pem: bytes, ca_pem: bytes, cn: str) -> tuple[bytes, bytes]:
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    ca = x509.load_pem_x509_certificate(ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn)])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def _heartbeat(server: ServerProcess, key: bytes, cert: bytes) -> grpc.StatusCode:
    creds = grpc.ssl_channel_credentials(server.ca_pem, key, cert)
    with grpc.secure_channel(server.grpc_target, creds) as ch:
        try:
            moray_pb2_grpc.AgentServiceStub(ch).Heartbeat(moray_pb2.HeartbeatRequest(),
                                                          timeout=5)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_unknown_and_revoked_agents_are_refused(server: ServerProcess,
                                                tmp_path: Path) -> None:
    pki = server.data_dir / "pki"
    # signed by our CA but never enrolled
    key, cert = _client_cert((pki / "ca.key").read_bytes(), server.ca_pem, "f" * 32)
    assert _heartbeat(server, key, cert) == grpc.StatusCode.UNAUTHENTICATED
    # signed by another CA: the TLS handshake fails
    other = ec.generate_private_key(ec.SECP256R1())
    other_ca_key = other.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    key2, cert2 = _client_cert(other_ca_key, server.ca_pem, "x")
    assert _heartbeat(server, key2, cert2) == grpc.StatusCode.UNAVAILABLE
    # no client certificate at all
    with grpc.secure_channel(server.grpc_target,
                             grpc.ssl_channel_credentials(server.ca_pem)) as ch:
        with pytest.raises(grpc.RpcError) as err:
            moray_pb2_grpc.AgentServiceStub(ch).Heartbeat(moray_pb2.HeartbeatRequest(),
                                                          timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # an enrolment token works once
    api = server.api()
    token = api.token()
    client, rec = make_client(server, tmp_path / "a")
    ident = tmp_path / "a" / "identity"
    good_key, good_cert = (ident / "agent.key").read_bytes(), (ident / "agent.pem").read_bytes()
    assert _heartbeat(server, good_key, good_cert) == grpc.StatusCode.OK
    enroll(server.enroll_target, token, server.ca_pem, tmp_path / "once")
    with pytest.raises(EnrollmentError, match="PERMISSION_DENIED"):
        enroll(server.enroll_target, token, server.ca_pem, tmp_path / "twice")
    # revocation: the open stream ends, and every later call is refused
    api("POST", f"/api/v1/agents/{client.identity.agent_id}/revoke", expect=200)
    wait_for(lambda: client.refused is not None, timeout=5, what="agent told it is refused")
    assert _heartbeat(server, good_key, good_cert) == grpc.StatusCode.PERMISSION_DENIED
    api.apply(policy_yaml("after-revoke"))
    time.sleep(0.5)
    assert "after-revoke" not in rec.versions()
    client.stop()


def test_failed_apply_is_acknowledged_as_failed(server: ServerProcess,
                                                tmp_path: Path) -> None:
    client, _rec = make_client(server, tmp_path / "a", recorder=Recorder(fail={"bad"}))
    try:
        server.api().apply(policy_yaml("bad"))
        agent_id = client.identity.agent_id
        ack = wait_for(lambda: server.api()("GET", f"/api/v1/agents/{agent_id}")[
            "policies"].get("bad"), timeout=3)
        assert ack["status"] == "FAILED" and ack["error"] == "pipeline says no"
    finally:
        client.stop()


def test_enrol_with_a_pinned_ca_fingerprint(server: ServerProcess, tmp_path: Path) -> None:
    api = server.api()
    issued = api("POST", "/api/v1/enrollment-tokens", expect=201, json={"labels": {}})
    ca_url = f"{server.url}/ca.pem"
    wrong = ControlPlaneClient(server.grpc_target, tmp_path / "wrong", Recorder(),
                               token=issued["token"], ca_sha256="00" * 32, ca_url=ca_url,
                               enroll_server=server.enroll_target)
    wrong.start()
    time.sleep(1.0)
    assert wrong.identity is None            # refused to trust an unpinned CA
    wrong.stop()
    client = ControlPlaneClient(server.grpc_target, tmp_path / "pinned", Recorder(),
                                token=issued["token"], ca_sha256=issued["ca_sha256"],
                                ca_url=ca_url, enroll_server=server.enroll_target)
    client.start()
    try:
        wait_for(lambda: client.identity is not None, what="enrolment with the pinned CA")
        assert client.ca_pem == server.ca_pem
    finally:
        client.stop()
