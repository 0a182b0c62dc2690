"""The console's lists page from indexes (revision 0013), on a real SQLite store: agents
in enrolment order and images by reference as keyset pages (``after`` + ``next``) that
list each one once, with the same rows as the whole list; the images page counts the
page's images only and filters by name and verdict; the audit log's actor and action
filters are index ranges (EXPLAIN QUERY PLAN names the index); and the migration from
0012 builds the indexes over rows already stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, inspect, text

from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore, actor_names
from moray.controlplane.store.scan.verdicts import ImageReport, ImageVuln
from moray.controlplane.store.scanstore import ScanStore


def _enroll(store: ControlPlaneStore, tenant: str, n: int) -> list[str]:
    token = store.create_enrollment_token(tenant=tenant, labels={}, author="a", uses=None)
    return [store.enroll_agent(token, hostname=f"{tenant}-{i}", labels={},
                               issue=lambda agent_id: (f"serial-{agent_id}", "sha")).id
            for i in range(n)]


def _follow(page: Any) -> list[Any]:
    rows, after = page(None)
    out = list(rows)
    while after is not None:
        rows, after = page(after)
        assert rows, "a next cursor leads to a page with rows"
        out.extend(rows)
    return out


def test_agent_pages_follow_next_per_tenant(engine: Engine) -> None:
    store = ControlPlaneStore(engine)
    t1 = _enroll(store, "t1", 5)
    t2 = _enroll(store, "t2", 3)
    every = [a.id for a in store.agents()]
    assert sorted(every) == sorted(t1 + t2)
    for tenant, mine in ((None, every), ("t1", [a.id for a in store.agents("t1")]),
                         ("t2", [a.id for a in store.agents("t2")])):
        for limit in (1, 2, 3, 100):
            paged = _follow(lambda after, t=tenant, n=limit: store.agent_page(
                t, after=after, limit=n))
            assert [a.id for a in paged] == mine
    # a cursor of another tenant's agent (or none at all) starts nowhere
    assert store.agent_page("t2", after=t1[0], limit=2) == ([], None)
    assert store.agent_page(None, after="nope", limit=2) == ([], None)
    page, after = store.agent_page("t1", limit=2)
    assert [a.tenant for a in page] == ["t1", "t1"] and after == page[-1].id


def _vulns(n: int, severity: str) -> list[ImageVuln]:
    return [ImageVuln(f"CVE-{severity}-{i}", severity, f"pkg{i}", "1.0",
                      aliases=(f"GHSA-{severity}-{i}",)) for i in range(n)]


def test_image_pages_by_reference_with_the_page_counts(engine: Engine) -> None:
    scans = ScanStore(engine)
    digests = [f"sha256:{i:064x}" for i in range(12)]
    for i, d in enumerate(digests):
        scans.record_verdict(d, f"reg/app{i % 4}:{i}", "strict", i % 3 != 0, [],
                             vulnerabilities=_vulns(i % 3, "high") + _vulns(1, "low"),
                             report=ImageReport([{"rule": "aws"}] * (i % 2), [], ""))
        scans.record_verdict(d, f"reg/app{i % 4}:{i}", "base", True, [])
    scans.link_images("t1", digests[:5])
    whole = scans.image_summaries()
    for limit in (1, 5, 50):
        paged = _follow(lambda after, n=limit: scans.image_page(after=after, limit=n))
        assert paged == whole
    assert [i["digest"] for i in _follow(lambda after: scans.image_page(
        "t1", after=after, limit=2))] == [i["digest"] for i in scans.image_summaries("t1")]
    # images nobody brought in are the default tenant's, as image_summaries says
    assert ({i["digest"] for i in _follow(lambda after: scans.image_page(
        "default", after=after, limit=4))} == set(digests[5:])
        == {i["digest"] for i in scans.image_summaries("default")})
    first = next(i for i in whole if i["digest"] == digests[2])
    assert first["severities"] == {"high": 2, "low": 1} and first["secrets"] == 0
    assert [v["policy"] for v in first["verdicts"]] == ["base", "strict"]
    failed = _follow(lambda after: scans.image_page(after=after, limit=2, passed=False))
    assert {i["digest"] for i in failed} == {d for i, d in enumerate(digests) if i % 3 == 0}
    assert all(not i["passed"] for i in failed)
    named = _follow(lambda after: scans.image_page(after=after, limit=1, name="APP3"))
    assert [i["image"] for i in named] == sorted(f"reg/app3:{i}" for i in (3, 7, 11))
    assert scans.image_page(after="sha256:none", limit=2) == ([], None)
    # another tenant's image as the cursor starts nowhere (no oracle of its place)
    assert scans.image_page("t1", after=digests[7], limit=2) == ([], None)
    assert scans.image_page("default", after=digests[0], limit=2) == ([], None)


def _plan(engine: Engine, sql: str, **params: Any) -> str:
    with engine.connect() as c:
        return " ".join(str(r[-1]) for r in c.execute(text("EXPLAIN QUERY PLAN " + sql),
                                                      params))


def test_audit_filters_by_actor_and_action_from_their_indexes(engine: Engine) -> None:
    store = ControlPlaneStore(engine)
    for actor, action in (("admin:alice", "policy.apply"), ("viewer:user:alice", "user.login"),
                          ("admin:alicex", "policy.delete"), ("moray-server", "session.lockout"),
                          ("operator:bob", "policy.rollback"), ("alice", "agent.revoke")):
        store.record_audit(actor, action, "x")

    def actors(**kw: Any) -> list[str]:
        return [e["actor"] for e in store.audit_log(before_id=10**12, limit=100, **kw)]

    assert actors(actor="alice") == ["alice", "viewer:user:alice", "admin:alice"]
    assert actors(actor="user:alice") == ["viewer:user:alice"]
    assert actors(action="policy.") == ["operator:bob", "admin:alicex", "admin:alice"]
    assert actors(action="policy.apply") == ["admin:alice"]
    assert actors(action="policy") == []
    assert "admin:user:alice" in actor_names("alice")


def test_sqlite_plans_read_the_audit_filters_from_their_indexes(engine: Engine) -> None:
    assert _plan(engine, "SELECT id FROM cp_audit WHERE actor IN ('a', 'admin:a') "
                 "AND id < 99 ORDER BY id DESC LIMIT 10").count("ix_cp_audit_actor")
    assert "ix_cp_audit_action" in _plan(
        engine, "SELECT id FROM cp_audit WHERE action >= 'policy.' AND action < 'policy/' "
        "AND id < 99 ORDER BY id DESC LIMIT 10")


def test_revision_0013_indexes_rows_stored_at_0012(engine: Engine) -> None:
    from alembic import command

    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0012")
    names = {i["name"] for i in inspect(engine).get_indexes("cp_audit")}
    assert "ix_cp_audit_actor" not in names
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO cp_audit (at, actor, action, target, detail) "
                          "VALUES (1, 'admin:alice', 'policy.apply', 'web', '{}')"))
        conn.execute(text(
            "INSERT INTO cp_agent (id, tenant, hostname, labels, cert_serial, cert_sha256, "
            "enrolled_at, status, kind) VALUES ('agent1', 't', 'h', '{}', 's1', 'x', 2, '{}', "
            "'agent')"))
    db.migrate(engine)
    assert db.current_revision(engine) == db.HEAD == "0013"
    insp = inspect(engine)
    assert {"ix_cp_audit_actor", "ix_cp_audit_action"} <= {
        i["name"] for i in insp.get_indexes("cp_audit")}
    assert {"ix_cp_agent_enrolled", "ix_cp_agent_tenant_enrolled"} <= {
        i["name"] for i in insp.get_indexes("cp_agent")}
    assert "image_verdict_image" in {i["name"] for i in insp.get_indexes("image_verdict")}
    store = ControlPlaneStore(engine)
    assert [e["action"] for e in store.audit_log(actor="alice", action="policy.")] \
        == ["policy.apply"]
    assert [a.id for a in store.agent_page("t", limit=1)[0]] == ["agent1"]
