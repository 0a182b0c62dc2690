"""The store's side of tenancy (controlplane/store/cpstore.py): the tenant registry
(migration 0009 fills it with the tenants data already names), audit entries carrying
their tenant, the objects of another tenant not found, and a distribution to several
tenants stored in one transaction (a failure part-way stores nothing)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from moray.controlplane.store import db
from moray.controlplane.store.cpstore import (
    Conflict,
    ControlPlaneStore,
    NotFound,
    StoreError,
    UnknownTenant,
)
from tests.unit.controlplane.conftest import FakeSigner

DOC = {"apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": "p"},
       "spec": {"scope": {"host": True}, "exec": {"deny": ["/bin/sh"]}}}


def _issue(_agent_id: str) -> tuple[str, str]:
    import uuid
    return uuid.uuid4().hex, "0" * 64


def test_registry_create_list_delete(store: ControlPlaneStore) -> None:
    assert [t["name"] for t in store.tenants()] == ["default"]    # the migration's
    store.create_tenant("shop", author="admin:x", comment="web shop")
    with pytest.raises(Conflict):
        store.create_tenant("shop", author="admin:x")
    with pytest.raises(StoreError):
        store.create_tenant("-no-", author="admin:x")
    store.apply_policy("shop", "p", DOC, author="admin:x", signer=FakeSigner())
    agent = store.enroll_agent(store.create_enrollment_token(tenant="shop", labels={},
                                                             author="admin:x"),
                               hostname="h", labels={}, issue=_issue)
    shop = store.tenants("shop")[0]
    assert (shop["agents"], shop["policies"], shop["comment"]) == (1, 1, "web shop")
    with pytest.raises(Conflict, match="revoke them first"):
        store.delete_tenant("shop", author="admin:x")
    store.revoke_agent(agent.id, author="admin:x")
    spare = store.issue_enrollment_token(tenant="shop", labels={}, author="admin:x")
    with pytest.raises(Conflict, match="usable enrolment tokens"):
        store.delete_tenant("shop", author="admin:x")
    store.revoke_enrollment_token(spare.id, author="admin:x")
    store.delete_tenant("shop", author="admin:x")
    assert not store.tenant_exists("shop")
    with pytest.raises(NotFound):
        store.delete_tenant("shop", author="admin:x")
    entries = store.audit_log(tenant="shop", limit=1000)
    assert {e["action"] for e in entries} >= {"tenant.create", "policy.apply",
                                              "enrollment_token.create", "agent.enroll",
                                              "agent.revoke", "tenant.delete"}
    assert all(e["tenant"] == "shop" for e in entries)
    assert not store.audit_log(tenant="default", limit=1000)


def test_registered_tokens_need_a_registered_tenant(store: ControlPlaneStore) -> None:
    with pytest.raises(UnknownTenant, match="moray tenant create gone"):
        store.issue_enrollment_token(tenant="gone", labels={}, author="a", registered=True)
    assert store.issue_enrollment_token(tenant="default", labels={}, author="a",
                                        registered=True).tenant == "default"


def test_objects_of_another_tenant_are_not_found(store: ControlPlaneStore) -> None:
    token = store.issue_enrollment_token(tenant="a", labels={}, author="admin:x")
    agent = store.enroll_agent(str(token.token), hostname="h", labels={}, issue=_issue)
    for call in (lambda: store.set_agent_labels(agent.id, {"x": "y"}, author="b", tenant="b"),
                 lambda: store.revoke_agent(agent.id, author="b", tenant="b"),
                 lambda: store.revoke_enrollment_token(token.id, author="b", tenant="b")):
        with pytest.raises(NotFound):
            call()
    stored = store.agent(agent.id)
    assert stored is not None and stored.labels == {} and stored.revoked_at is None
    assert store.set_agent_labels(agent.id, {"x": "y"}, author="a", tenant="a").labels == {
        "x": "y"}


class FailingSigner(FakeSigner):
    """Fails on its ``fail_at``-th signature (a database or key failure part-way)."""

    def __init__(self, fail_at: int) -> None:
        self.n, self.fail_at = 0, fail_at

    def sign(self, data: bytes) -> bytes:
        self.n += 1
        if self.n == self.fail_at:
            raise RuntimeError("signing failed")
        return super().sign(data)


def test_distribution_is_all_or_nothing(store: ControlPlaneStore) -> None:
    items = [(t, "p", DOC) for t in ("a", "b", "c")]
    with pytest.raises(RuntimeError):
        store.apply_policies(items, author="admin:x", signer=FailingSigner(3))
    assert store.current_policies() == []
    assert not [e for e in store.audit_log(limit=1000) if e["action"] == "policy.apply"]
    done = store.apply_policies(items, author="admin:x", signer=FakeSigner())
    assert [(r.tenant, r.version, changed) for r, changed in done] == [
        ("a", 1, True), ("b", 1, True), ("c", 1, True)]
    again = store.apply_policies(items, author="admin:x", signer=FakeSigner())
    assert [changed for _, changed in again] == [False, False, False]


def test_migration_fills_the_registry_from_existing_data(tmp_path: object) -> None:
    from pathlib import Path
    engine: Engine = db.make_engine(db.database_url(data=Path(str(tmp_path))))
    try:
        db.migrate(engine, "0007")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO cp_policy (tenant, name, current_version, removed, updated_at) "
                "VALUES ('legacy', 'p', 0, false, 0)"))
            conn.execute(text(
                "INSERT INTO cp_api_token (name, role, token_sha256, created_at, tenant) "
                "VALUES ('t', 'viewer', 'x', 0, 'scoped')"))
        db.migrate(engine)
        names = [t["name"] for t in ControlPlaneStore(engine).tenants()]
        assert names == ["default", "legacy", "scoped"]
    finally:
        engine.dispose()
