"""The store against hostile or broken agents: event ids are unique per agent (another
agent's id is not a duplicate), nothing is stored for a revoked agent, acknowledgements
are validated one by one (a bad one never drops the others), a stored payload that is not
JSON does not break reading, and revision 0003 keeps the events stored before it. Runs on
SQLite here and on PostgreSQL in tests/integration/test_server_store_pg.py."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from moray.controlplane.server.cli_api import _when
from moray.controlplane.store import db
from moray.controlplane.store.cpstore import AgentRevoked, ControlPlaneStore, PolicyAckRow

from .conftest import FakeSigner
from .test_store import DOC, enrolled


def test_event_ids_are_unique_per_agent(store: ControlPlaneStore) -> None:
    a, b = enrolled(store), enrolled(store, tenant="other")
    batch = [(f"same-{i}", i, "exec", "{}") for i in range(5)]
    assert store.insert_events(a, "t", batch).stored == 5
    second = store.insert_events(b, "other", batch)
    assert (second.stored, second.duplicates) == (5, 0)
    assert store.insert_events(a, "t", batch).duplicates == 5
    rows = store.query_events(limit=100)
    assert sorted((r["agent_id"], r["id"]) for r in rows) == sorted(
        [(a, f"same-{i}") for i in range(5)] + [(b, f"same-{i}") for i in range(5)])


def test_several_agents_in_one_transaction(store: ControlPlaneStore) -> None:
    """insert_groups (the server's group commit): each group counted on its own, a revoked
    or unknown agent's group refused alone, an agent twice in one call counted once."""
    a, b, gone = enrolled(store), enrolled(store, tenant="other"), enrolled(store)
    store.revoke_agent(gone, author="admin")
    ev = [(f"e-{i}", i, "exec", "{}") for i in range(4)]
    results = store.insert_groups([(a, "t", ev[:2]), (gone, "t", ev), (b, "other", ev),
                                   ("no-such-agent", "t", ev), (a, "t", ev[1:]), (b, "other", [])])
    assert [(r.stored, r.duplicates) if r else None for r in results] == [
        (2, 0), None, (4, 0), None, (2, 1), (0, 0)]
    assert sorted(r["id"] for r in store.query_events(agent_id=a, limit=10)) == \
        [f"e-{i}" for i in range(4)]
    assert store.query_events(agent_id=gone, limit=10) == []


def test_nothing_stored_for_revoked_or_unknown_agents(store: ControlPlaneStore) -> None:
    agent = enrolled(store)
    store.insert_events(agent, "t", [("before", 1, "exec", "{}")])
    store.heartbeats([(agent, {"kernel": "before"}, 1.0)])
    store.revoke_agent(agent, author="admin")
    with pytest.raises(AgentRevoked):
        store.insert_events(agent, "t", [("after", 2, "exec", "{}")])
    with pytest.raises(AgentRevoked):
        store.insert_events("no-such-agent", "t", [("x", 2, "exec", "{}")])
    store.heartbeats([(agent, {"kernel": "after"}, 2.0)])
    record = store.agent(agent)
    assert record is not None and record.status == {"kernel": "before"}
    assert [r["id"] for r in store.query_events()] == ["before"]


def test_bad_acks_are_refused_one_by_one(store: ControlPlaneStore, signer: FakeSigner) -> None:
    good, other, revoked = enrolled(store, "default"), enrolled(store, "default"), \
        enrolled(store, "default")
    store.apply_policy("default", "web", DOC, author="a", signer=signer)
    store.revoke_agent(revoked, author="admin")
    now = time.time()
    rows = [PolicyAckRow(good, "web", 1, "APPLIED", "", {"exec.deny[0]": "lsm"}, now),
            PolicyAckRow(other, "web", 2**63, "APPLIED", "", {}, now),       # never issued
            PolicyAckRow(other, "made-up", 1, "APPLIED", "", {}, now),       # no such policy
            PolicyAckRow(other, "web", 1, "NONSENSE", "", {}, now),          # no such status
            PolicyAckRow(revoked, "web", 1, "APPLIED", "", {}, now),         # revoked
            PolicyAckRow("nobody", "web", 1, "APPLIED", "", {}, now),        # unknown agent
            PolicyAckRow(other, "web", 1, "FAILED", "x" * 100_000, {}, now)]
    assert store.record_acks(rows) == 5
    g, o = store.agent(good), store.agent(other)
    assert g is not None and g.policies["web"]["version"] == 1
    assert o is not None and set(o.policies) == {"web"}
    assert o.policies["web"]["status"] == "FAILED" and len(o.policies["web"]["error"]) == 4096
    r = store.agent(revoked)
    assert r is not None and r.policies == {}


def test_stored_payload_that_is_not_json_does_not_break_reading(
        store: ControlPlaneStore) -> None:
    agent = enrolled(store)
    store.insert_events(agent, "t", [("ok-1", 1, "exec", '{"n": 1}'),
                                     ("bad", 2, "exec", "not json {"),
                                     ("list", 3, "exec", "[1, 2]"),
                                     ("ok-2", 4, "exec", '{"n": 2}')])
    rows = store.query_events()
    assert [r["event"] for r in rows] == [{"n": 1}, None, None, {"n": 2}]
    assert rows[1]["invalid_payload"] == "not json {"


def test_revision_0003_keeps_events_and_frees_ids_per_agent(engine: Engine) -> None:
    """Down to 0002 (ids unique across agents), store, up again: the rows are kept, and
    only then may another agent reuse an id."""
    db.migrate(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO cp_event (id, agent_id, tenant, type, time_ms, "
                          "received_at, payload) VALUES ('e1', 'a', 't', 'exec', 1, 1, '{}')"))
    db.migrate(engine)
    assert db.current_revision(engine) == db.HEAD
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO cp_event (id, agent_id, tenant, type, time_ms, "
                          "received_at, payload) VALUES ('e1', 'b', 't', 'exec', 1, 1, '{}')"))
        assert conn.execute(text("SELECT agent_id FROM cp_event WHERE id = 'e1' "
                                 "ORDER BY seq")).scalars().all() == ["a", "b"]


def test_cli_shows_times_out_of_range() -> None:
    """`moray events` prints an agent's event whatever its clock said."""
    assert _when((2**63 - 1) / 1000).startswith("292278994-")
    assert _when(1e300).startswith("@")
    assert _when(None) == "-" and _when(0) == "-"
