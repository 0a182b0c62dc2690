from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from moray.api.proto import moray_pb2
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore, NotFound, StoreError
from moray.controlplane.store.migrations.env_filter import include_object
from moray.controlplane.store.models import Base

from .conftest import FakeSigner

DOC = {"apiVersion": "moray/v1", "kind": "RuntimePolicy",
       "metadata": {"name": "web", "tenant": "default"},
       "spec": {"mode": "enforce", "exec": {"deny": ["/bin/sh"]}}}


def test_default_url_is_sqlite_under_data_dir(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MORAY_DATABASE_URL", raising=False)
    monkeypatch.setenv("MORAY_DATA_DIR", str(tmp_path))
    assert db.database_url() == f"sqlite:///{tmp_path}/moray.db"
    assert db.database_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"


def test_migrations_match_models(engine: Engine) -> None:
    assert db.current_revision(engine) == db.HEAD == "0013"
    assert db.at_head(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(ctx, Base.metadata) == []


def test_migrate_leaves_scanner_tables_alone(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "moray.db")
    con.execute("CREATE TABLE vuln_advisory (id TEXT PRIMARY KEY)")
    con.execute("INSERT INTO vuln_advisory VALUES ('CVE-1')")
    con.commit()
    eng = db.make_engine(db.database_url(data=tmp_path))
    db.migrate(eng)
    assert con.execute("SELECT id FROM vuln_advisory").fetchall() == [("CVE-1",)]


def test_versions_rollback_delete_and_audit(store: ControlPlaneStore,
                                            signer: FakeSigner) -> None:
    v1, changed = store.apply_policy("default", "web", DOC, author="alice", signer=signer,
                                     source="web.yaml")
    assert (v1.version, changed) == (1, True)
    same, changed = store.apply_policy("default", "web", DOC, author="alice", signer=signer)
    assert (same.version, changed) == (1, False)
    doc2 = {**DOC, "spec": {"mode": "monitor"}}
    v2, _ = store.apply_policy("default", "web", doc2, author="bob", signer=signer)
    assert v2.version == 2
    v3 = store.rollback_policy("default", "web", 1, author="carol", signer=signer)
    assert (v3.version, v3.document, v3.action) == (3, DOC, "rollback")
    payload = moray_pb2.PolicyPayload.FromString(v3.payload)
    assert (payload.name, payload.version, payload.removed) == ("web", 3, False)
    assert v3.signature == signer.sign(v3.payload)
    v4 = store.delete_policy("default", "web", author="dave", signer=signer)
    assert v4.removed and v4.version == 4
    assert store.current_policies("default") == []
    assert [r.version for r in store.policy_history("default", "web")] == [1, 2, 3, 4]
    again, changed = store.apply_policy("default", "web", DOC, author="erin", signer=signer)
    assert (again.version, changed) == (5, True)
    audit = store.audit_log()
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("alice", "policy.apply"), ("bob", "policy.apply"), ("carol", "policy.rollback"),
        ("dave", "policy.delete"), ("erin", "policy.apply")]
    with pytest.raises(NotFound):
        store.rollback_policy("default", "web", 99, author="x", signer=signer)
    with pytest.raises(NotFound):
        store.policy_history("default", "nope")
    assert store.policy_generation() == 5


def test_enrollment_token_is_one_time(store: ControlPlaneStore) -> None:
    token = store.create_enrollment_token(tenant="t1", labels={"zone": "a"}, author="admin")
    issued: list[str] = []

    def issue(agent_id: str) -> tuple[str, str]:
        issued.append(agent_id)
        return f"serial-{agent_id}", "sha"

    agent = store.enroll_agent(token, hostname="h1", labels={"zone": "b", "os": "linux"},
                               issue=issue)
    assert agent.tenant == "t1" and agent.labels == {"zone": "a", "os": "linux"}
    with pytest.raises(StoreError):
        store.enroll_agent(token, hostname="h2", labels={}, issue=issue)
    with pytest.raises(StoreError):
        store.enroll_agent("moray-enroll-guess", hostname="h2", labels={}, issue=issue)
    assert len(issued) == 1
    assert store.revoke_agent(agent.id, author="admin").revoked_at is not None


def test_agent_kind_declared_at_enrolment(engine: Engine) -> None:
    """The kind the client declares is stored and listed; "" (an agent from before kinds)
    is "agent"; a kind that is not a short lowercase name is refused and spends no use."""
    store = ControlPlaneStore(engine)
    token = store.create_enrollment_token(tenant="t", labels={}, author="a", uses=None)

    def issue(agent_id: str) -> tuple[str, str]:
        return f"serial-{agent_id}", "sha"

    micro = store.enroll_agent(token, hostname="m", labels={}, issue=issue, kind="micro")
    old = store.enroll_agent(token, hostname="o", labels={}, issue=issue, kind="")
    host = store.enroll_agent(token, hostname="h", labels={}, issue=issue)
    for bad in ("Micro", "<b>x</b>", "a" * 33, "-x"):
        with pytest.raises(StoreError, match="kind"):
            store.enroll_agent(token, hostname="x", labels={}, issue=issue, kind=bad)
    kinds = {a.hostname: (a.kind, a.as_dict()["kind"]) for a in store.agents()}
    assert kinds == {"m": ("micro", "micro"), "o": ("agent", "agent"),
                     "h": ("agent", "agent")}
    assert micro.kind == "micro" and old.kind == host.kind == "agent"
    assert store.enrollment_tokens()[0].uses == 3


def test_revision_0012_makes_enrolled_agents_agents(engine: Engine) -> None:
    """An agent stored at 0011 is of kind "agent" after 0012 (down to 0011 first)."""
    from alembic import command
    from sqlalchemy import text

    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO cp_agent (id, tenant, hostname, labels, cert_serial, cert_sha256, "
            "enrolled_at, status) VALUES ('agent1', 't', 'h', '{}', 's1', 'x', 2, '{}')"))
    db.migrate(engine)
    assert db.current_revision(engine) == db.HEAD
    assert [(a.id, a.kind) for a in ControlPlaneStore(engine).agents()] == [("agent1", "agent")]


def test_expired_token_refused(engine: Engine) -> None:
    now = [1000.0]
    store = ControlPlaneStore(engine, clock=lambda: now[0])
    token = store.create_enrollment_token(tenant="t", labels={}, author="a", ttl=10)
    now[0] += 11
    with pytest.raises(StoreError):
        store.enroll_agent(token, hostname="h", labels={}, issue=lambda a: ("s", "x"))


def enrolled(store: ControlPlaneStore, tenant: str = "t") -> str:
    token = store.create_enrollment_token(tenant=tenant, labels={}, author="admin")
    return store.enroll_agent(token, hostname="h", labels={},
                              issue=lambda agent_id: (f"serial-{agent_id}", "sha")).id


def test_events_stored_once(store: ControlPlaneStore) -> None:
    a1 = enrolled(store)
    batch = [(f"e{i}", i, "exec", json.dumps({"n": i})) for i in range(10)]
    assert store.insert_events(a1, "t", batch).stored == 10
    again = store.insert_events(a1, "t", [*batch[5:], ("e10", 10, "exit", "{}")])
    assert (again.stored, again.duplicates) == (1, 5)
    dup_in_batch = store.insert_events(a1, "t", [("x", 1, "exec", "{}")] * 3)
    assert (dup_in_batch.stored, dup_in_batch.duplicates) == (1, 2)
    rows = store.query_events(limit=1000)
    assert [r["id"] for r in rows] == [f"e{i}" for i in range(11)] + ["x"]
    assert store.query_events(after_seq=rows[-2]["seq"])[0]["id"] == "x"
    assert [r["id"] for r in store.query_events(type="exit")] == ["e10"]


def test_concurrent_writers_store_each_event_once(store: ControlPlaneStore) -> None:
    batch = [(f"c{i}", i, "exec", "{}") for i in range(200)]
    results = []
    agent = enrolled(store)

    def write() -> None:
        results.append(store.insert_events(agent, "t", batch))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.stored for r in results) == 200
    assert store.count_events() == 200


def test_api_tokens_and_roles(store: ControlPlaneStore) -> None:
    assert not store.has_api_tokens()
    token = store.create_api_token("ci", "operator", author="admin")
    assert store.authenticate(token) == ("ci", "operator", None)
    assert store.authenticate(token + "x") is None
    with pytest.raises(StoreError):
        store.create_api_token("x", "root", author="admin")


def test_event_rows_fit_the_columns() -> None:
    from moray.controlplane.server.agentapi import _event_row

    long_id = moray_pb2.Event(id="x" * 200, type="t" * 100, payload_json=b'{"a":1}')
    row = _event_row(long_id)
    assert len(row[0]) == 64 and row[0] == _event_row(long_id)[0] and len(row[2]) == 32
    no_id = _event_row(moray_pb2.Event(payload_json=b'{"b":2}'))
    assert len(no_id[0]) == 64 and no_id[2] == "unknown"


def test_audit_log_pages_newest_first_and_filters(store: ControlPlaneStore) -> None:
    for i in range(5):
        store.record_audit("admin:alice" if i % 2 else "operator:bob", f"policy.x{i}", "t", {})
    store.record_audit("admin:x_y", "token.create", "t", {})
    ids = [r["id"] for r in store.audit_log(limit=100)]
    assert ids == sorted(ids)
    newest = store.audit_log(before_id=2**63 - 1, limit=2)
    assert [r["id"] for r in newest] == ids[::-1][:2]
    assert [r["id"] for r in store.audit_log(before_id=newest[-1]["id"], limit=100)] == \
        ids[::-1][2:]
    assert {r["actor"] for r in store.audit_log(actor="alice")} == {"admin:alice"}
    assert {r["actor"] for r in store.audit_log(actor="operator:bob")} == {"operator:bob"}
    assert store.audit_log(actor="x%y") == []               # LIKE wildcards are literal
    assert len(store.audit_log(actor="x_y")) == 1
    assert len(store.audit_log(action="policy.")) == 5
    assert [r["action"] for r in store.audit_log(action="policy.x3")] == ["policy.x3"]
    assert store.audit_log(action="policy") == []
