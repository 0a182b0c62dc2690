"""Multi-use enrolment tokens in the store (uses, expiry, revocation, listing, audit, the
0005 migration of one-time tokens) and the enrolment rate limiter. The same store tests
run on PostgreSQL from tests/integration/test_server_store_pg.py; real concurrent
enrolments on both backends are in tests/integration/test_enrollment_tokens.py."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import Engine, text

from moray.controlplane.server.limits import (
    EnrollLimits,
    RateLimiter,
    parse_rate,
    peer_address,
)
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import ControlPlaneStore, NotFound, StoreError


def _issue(agent_id: str) -> tuple[str, str]:
    return f"serial-{agent_id}", "sha"


def test_multi_use_token_enrols_its_uses_and_no_more(store: ControlPlaneStore) -> None:
    issued = store.issue_enrollment_token(tenant="t", labels={"role": "node"}, author="admin",
                                          uses=3, comment="ds")
    assert issued.token is not None and issued.uses_left == 3
    agents = [store.enroll_agent(issued.token, hostname=f"n{i}", labels={"role": "x"},
                                 issue=_issue) for i in range(3)]
    assert all(a.labels == {"role": "node"} and a.enrollment_token_id == issued.id
               for a in agents)
    with pytest.raises(StoreError, match="used up"):
        store.enroll_agent(issued.token, hostname="n3", labels={}, issue=_issue)
    assert store.enrollment_tokens() == []            # used up: not active
    (row,) = store.enrollment_tokens(include_inactive=True)
    assert (row.uses, row.uses_left, row.agents, row.token) == (3, 0, 3, None)
    assert row.state(store.clock()) == "used-up"
    assert {a.id for a in store.agents(enrollment_token=issued.id)} == {a.id for a in agents}


def test_unlimited_token_until_revoked(store: ControlPlaneStore) -> None:
    issued = store.issue_enrollment_token(tenant="t", labels={}, author="admin", uses=None)
    assert issued.token is not None and issued.uses_left is None
    for i in range(5):
        store.enroll_agent(issued.token, hostname=f"n{i}", labels={}, issue=_issue)
    (row,) = store.enrollment_tokens()
    assert (row.uses, row.agents, row.max_uses) == (5, 5, None)
    revoked = store.revoke_enrollment_token(issued.id, author="alice")
    assert revoked.revoked_at is not None and revoked.agents == 5
    with pytest.raises(StoreError, match="revoked"):
        store.enroll_agent(issued.token, hostname="late", labels={}, issue=_issue)
    # revoking twice is not an error and does not audit twice
    store.revoke_enrollment_token(issued.id, author="alice")
    with pytest.raises(NotFound):
        store.revoke_enrollment_token(issued.id + 100, author="alice")
    assert [a for a in store.agents() if a.revoked_at is not None] == []   # agents stay
    actions = [r["action"] for r in store.audit_log(limit=1000)]
    assert actions.count("agent.enroll") == 5
    assert actions.count("enrollment_token.revoke") == 1


def test_every_use_is_audited_with_its_token(store: ControlPlaneStore) -> None:
    issued = store.issue_enrollment_token(tenant="t", labels={}, author="admin", uses=2)
    assert issued.token is not None
    for i in range(2):
        store.enroll_agent(issued.token, hostname=f"n{i}", labels={}, issue=_issue)
    log = store.audit_log(limit=100)
    create = [r for r in log if r["action"] == "enrollment_token.create"]
    assert create[0]["target"] == f"token:{issued.id}" and create[0]["detail"]["uses"] == 2
    uses = [r["detail"] for r in log if r["action"] == "agent.enroll"]
    assert [(u["token"], u["use"], u["uses_left"]) for u in uses] == [
        (issued.id, 1, 1), (issued.id, 2, 0)]
    assert issued.token not in json.dumps(log)         # the token itself is never stored


def test_failed_certificate_spends_no_use(store: ControlPlaneStore) -> None:
    token = store.create_enrollment_token(tenant="t", labels={}, author="admin")

    def broken(_agent_id: str) -> tuple[str, str]:
        raise StoreError("bad CSR")

    with pytest.raises(StoreError, match="bad CSR"):
        store.enroll_agent(token, hostname="h", labels={}, issue=broken)
    store.enroll_agent(token, hostname="h", labels={}, issue=_issue)


def test_bad_token_parameters_refused(store: ControlPlaneStore) -> None:
    with pytest.raises(StoreError):
        store.issue_enrollment_token(tenant="t", labels={}, author="a", uses=0)
    with pytest.raises(StoreError):
        store.issue_enrollment_token(tenant="t", labels={}, author="a", ttl=0)


def test_expired_multi_use_token_refused(engine: Engine) -> None:
    now = [1000.0]
    store = ControlPlaneStore(engine, clock=lambda: now[0])
    issued = store.issue_enrollment_token(tenant="t", labels={}, author="a", ttl=10,
                                          uses=None)
    assert issued.token is not None
    store.enroll_agent(issued.token, hostname="h", labels={}, issue=_issue)
    now[0] += 11
    with pytest.raises(StoreError, match="expired"):
        store.enroll_agent(issued.token, hostname="h2", labels={}, issue=_issue)
    assert store.enrollment_tokens() == []
    assert store.enrollment_tokens(include_inactive=True)[0].state(now[0]) == "expired"


def test_revision_0005_keeps_one_time_tokens_one_time(engine: Engine) -> None:
    """Tokens and agents stored at 0004 (one-time tokens, spent or not), then up to 0005:
    the spent token stays spent and names its agent, the unspent one has one use left
    (down from head to 0004 first: the downgrade works too)."""
    cfg = db.alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    assert db.current_revision(engine) == "0004"
    with engine.begin() as conn:
        for sha, used_by in (("a" * 64, "agent1"), ("b" * 64, None)):
            conn.execute(text(
                "INSERT INTO cp_enrollment_token (token_sha256, tenant, labels, created_by, "
                "created_at, expires_at, used_at, used_by) VALUES (:sha, 't', '{}', 'x', 1, "
                "4102444800, :used_at, :used_by)"),
                {"sha": sha, "used_at": 2.0 if used_by else None, "used_by": used_by})
        conn.execute(text(
            "INSERT INTO cp_agent (id, tenant, hostname, labels, cert_serial, cert_sha256, "
            "enrolled_at, status) VALUES ('agent1', 't', 'h', '{}', 's1', 'x', 2, '{}')"))
    db.migrate(engine)
    assert db.current_revision(engine) == db.HEAD
    store = ControlPlaneStore(engine)
    rows = {r.id: r for r in store.enrollment_tokens(include_inactive=True)}
    spent, fresh = rows[1], rows[2]
    assert (spent.max_uses, spent.uses, spent.uses_left, spent.agents) == (1, 1, 0, 1)
    assert (fresh.max_uses, fresh.uses, fresh.uses_left, fresh.agents) == (1, 0, 1, 0)
    assert [a.id for a in store.agents(enrollment_token=1)] == ["agent1"]


def test_rate_limiter_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3.0, max_keys=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)    # empty: one more in half a second
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0                    # keys are independent
    limiter.take("c")                                  # evicts "a" (least recently used)
    assert list(limiter._buckets) == ["b", "c"]
    assert RateLimiter(0, 0).take("x") == 0.0          # rate 0: no limit


def test_enroll_limits_per_source_then_per_token() -> None:
    now = [0.0]
    limits = EnrollLimits("1/2", "1/3", clock=lambda: now[0])
    assert limits.check("ipv4:10.0.0.1:5000", "tok") is None
    assert limits.check("ipv4:10.0.0.1:5001", "tok") is None      # same address, any port
    refused = limits.check("ipv4:10.0.0.1:5002", "tok")
    assert refused is not None and refused.scope == "source"
    assert "address" in refused.message()
    assert limits.check("ipv6:[fd00::2]:1", "tok") is None         # the token's 3rd use
    refused = limits.check("ipv4:10.0.0.3:1", "tok")
    assert refused is not None and refused.scope == "token"
    assert limits.check("ipv4:10.0.0.3:1", "other") is None
    now[0] += 1.0
    assert limits.check("ipv4:10.0.0.4:1", "tok") is None


def test_rate_parsing_and_peers() -> None:
    assert parse_rate("2/20") == (2.0, 20.0)
    assert parse_rate("0.5") == (0.5, 5.0)
    assert parse_rate("0") == (0.0, 1.0)
    for bad in ("x", "1/y", "-1"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert peer_address("ipv4:127.0.0.1:4000") == "127.0.0.1"
    assert peer_address("ipv6:[::1]:4000") == "::1"
    assert peer_address("unix:/tmp/s") == "unix:/tmp/s"
