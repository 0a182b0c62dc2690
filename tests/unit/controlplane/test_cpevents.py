"""The console's reads of the events (controlplane/store/cpevents.py): filters from the
columns taken at ingest, keyset pages newest first, ancestry, overview. Run on SQLite
here and on PostgreSQL by tests/integration/test_server_store_pg.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from moray.controlplane.store import db
from moray.controlplane.store.cpevents import HOUR_MS, MAX_ANCESTRY, EventFilter
from moray.controlplane.store.cpstore import ControlPlaneStore
from moray.controlplane.store.eventcols import event_columns
from moray.controlplane.store.scanstore import ScanStore, Verdict, WorkloadImage, WorkloadReview
from tests.unit.controlplane.test_store import enrolled

NOW = 1_800_000_000.0       # the store's clock in these tests


def container(name: str, image: str = "nginx:1") -> dict[str, Any]:
    return {"id": f"{name}-id", "name": name, "image": image, "runtime": "docker"}


def proc_event(kind: str, pid: int, ppid: int | None, *, args: list[str] | None = None,
               ctr: dict[str, Any] | None = None, node: str = "n1") -> dict[str, Any]:
    return {"type": kind, "node": node, "container": ctr,
            "process": {"pid": pid, "exec_id": f"{pid}:1", "binary": f"/bin/p{pid}",
                        "args": args if args is not None else [f"p{pid}"]},
            "parent": None if ppid is None else {"pid": ppid, "exec_id": f"{ppid}:1"}}


def alert(rule: str, priority: str, trigger: dict[str, Any]) -> dict[str, Any]:
    return {"type": "alert", "node": trigger["node"], "rule": rule, "priority": priority,
            "event": trigger, "ancestry": []}


def enforce(action: str, rule: str, pid: int = 5) -> dict[str, Any]:
    return {**proc_event("enforce", pid, 1), "enforcement": {"action": action, "rule": rule}}


def put(store: ControlPlaneStore, agent: str, tenant: str, events: list[dict[str, Any]],
        *, time_ms: int = int(NOW * 1000), prefix: str = "e") -> None:
    start = store.count_events()
    store.insert_events(agent, tenant, [(f"{prefix}{start + i}", time_ms, e["type"],
                                         json.dumps(e)) for i, e in enumerate(events)])


def ids(store: ControlPlaneStore, **where: Any) -> list[int]:
    found, _ = store.event_page(EventFilter(**where), limit=1000)
    return [e["seq"] for e in found]


def enrolled_on(store: ControlPlaneStore, hostname: str, tenant: str = "t") -> str:
    token = store.create_enrollment_token(tenant=tenant, labels={}, author="admin")
    return store.enroll_agent(token, hostname=hostname, labels={},
                              issue=lambda agent_id: (f"serial-{agent_id}", "sha")).id


def test_filters_come_from_the_payload(store: ControlPlaneStore) -> None:
    agent, other = enrolled_on(store, "n1"), enrolled_on(store, "n2")
    web = container("web", "nginx:1")
    put(store, agent, "t", [
        proc_event("exec", 10, 1, ctr=web),                                  # 1
        alert("Shell in container", "WARNING", proc_event("exec", 11, 10, ctr=web)),
        enforce("blocked", "deny-shells"),                                   # 3, host
    ])
    put(store, other, "t", [proc_event("open", 12, 1, ctr=container("db", "postgres:16"),
                                       node="n2")])
    put(store, agent, "t", [{"type": "exit"}])                                # no fields
    assert ids(store) == [5, 4, 3, 2, 1]
    assert ids(store, type="alert") == [2]
    assert ids(store, rule="Shell in container") == [2]
    assert ids(store, rule="deny-shells") == [3]
    assert ids(store, priority="WARNING") == [2]
    assert ids(store, container="web") == [2, 1]
    assert ids(store, image="postgres:16") == [4]
    assert ids(store, node="n2") == [4]                 # the agent's host name
    assert ids(store, node="n1", container="web", type="exec") == [1]
    assert ids(store, node="n1", tenant="other") == ids(store, node="nowhere") == []
    assert ids(store, agent_id=agent) == [5, 3, 2, 1]
    assert ids(store, tenant="other") == []
    found, _ = store.event_page(EventFilter(type="alert"))
    item = found[0]
    assert (item["rule"], item["priority"], item["container"], item["image"], item["node"],
            item["tenant"], item["agent_id"]) == (
        "Shell in container", "WARNING", "web", "nginx:1", "n1", "t", agent)
    assert item["event"]["process"]["pid"] == 11      # the payload's own fields, spread


def test_payload_cannot_pose_as_another_row(store: ControlPlaneStore) -> None:
    """A hostile payload's seq, tenant or agent id are not what the console sees; its
    oversized or non-string values do not break the batch."""
    agent = enrolled(store)
    put(store, agent, "t", [{"type": "alert", "seq": 99, "tenant": "x", "agent_id": "y",
                             "rule": "r" * 1000, "priority": 7, "node": "a\x00b",
                             "event": {"container": {"name": ["x"], "image": None}}}])
    (item,), _ = store.event_page(EventFilter())
    assert (item["seq"], item["tenant"], item["agent_id"]) == (1, "t", agent)
    assert item["rule"] == "r" * 253 and item["priority"] is None and item["node"] == "ab"
    assert item["container"] is None and item["image"] is None


def test_pages_have_no_gaps_or_duplicates_while_events_arrive(store: ControlPlaneStore
                                                              ) -> None:
    """Newest first, keyset on seq, two tenants merged for a global reader: paging while
    new events arrive shows each older event once, none skipped; a scoped reader pages
    its own tenant only."""
    a, b = enrolled(store, "t1"), enrolled(store, "t2")
    for i in range(30):
        put(store, a if i % 3 else b, "t1" if i % 3 else "t2",
            [proc_event("exec", 100 + i, 1)])
    everything = ids(store)
    assert everything == sorted(everything, reverse=True) and len(everything) == 30
    seen: list[int] = []
    before: int | None = None
    while True:
        page, before = store.event_page(EventFilter(type="exec"), before=before, limit=4)
        seen += [e["seq"] for e in page]
        put(store, a, "t1", [proc_event("exec", 999, 1)])     # arrives between pages
        if before is None:
            break
    assert seen == everything
    t2: list[int] = []
    before = None
    while True:
        page, before = store.event_page(EventFilter(tenant="t2"), before=before, limit=3)
        assert {e["tenant"] for e in page} <= {"t2"}
        t2 += [e["seq"] for e in page]
        if before is None:
            break
    assert len(t2) == 10 and t2 == sorted(set(t2), reverse=True)
    # the live view's poll: what arrived after the newest seq it has, newest first
    newest = ids(store)[0]
    put(store, b, "t2", [proc_event("exec", 7, 1)])
    page, _ = store.event_page(EventFilter(), after=newest)
    assert [e["seq"] for e in page] == [newest + 1]
    # the old shape: oldest first after a seq, payload under "event"
    old = store.query_events(tenant="t1", after_seq=0, limit=5)
    assert [e["seq"] for e in old] == sorted(e["seq"] for e in old)
    assert old[0]["event"]["type"] == "exec"


def test_time_window(store: ControlPlaneStore) -> None:
    agent = enrolled(store)
    for hour in range(5):
        put(store, agent, "t", [proc_event("exec", hour, 1)], time_ms=hour * HOUR_MS)
    assert len(ids(store, since_ms=2 * HOUR_MS)) == 3
    assert len(ids(store, since_ms=HOUR_MS, until_ms=3 * HOUR_MS)) == 2


def test_ancestry_walks_the_agents_exec_and_fork_events(store: ControlPlaneStore) -> None:
    agent, other = enrolled(store), enrolled(store)
    put(store, agent, "t", [
        proc_event("exec", 1, None, args=["/sbin/init"]),
        proc_event("fork", 10, 1, args=["/sbin/init"]),
        proc_event("exec", 10, 1, args=["sshd", "-D"]),
        proc_event("exec", 20, 10, args=["bash"]),
        proc_event("exec", 30, 20, args=["cat", "/etc/shadow"]),
    ])
    # another agent's processes with the same exec ids are not this agent's ancestors
    put(store, other, "t", [proc_event("exec", 20, 666, args=["evil"])], prefix="o")
    put(store, agent, "t", [alert("Read sensitive file", "WARNING",
                                  proc_event("open", 30, 20))])
    seq = ids(store, type="alert")[0]
    detail = store.event_detail(seq)
    assert detail is not None
    chain = detail["ancestry"]
    assert [(s["pid"], s["args"]) for s in chain] == [
        (30, ["cat", "/etc/shadow"]), (20, ["bash"]), (10, ["sshd", "-D"]),
        (1, ["/sbin/init"])]
    assert all(s["time_ms"] == int(NOW * 1000) for s in chain)
    assert detail["event"]["rule"] == "Read sensitive file" and detail["event"]["seq"] == seq
    assert detail["payload"]["event"]["process"]["pid"] == 30     # as the agent sent it
    assert store.event_detail(seq, tenant="other") is None
    assert store.event_detail(10**12) is None


def test_ancestry_ends_on_cycles_and_at_the_bound(store: ControlPlaneStore) -> None:
    """A hostile agent's parent loop (a -> b -> a) or a chain longer than the bound ends
    the walk; each exec id is shown once."""
    agent = enrolled(store)
    put(store, agent, "t", [proc_event("exec", 2, 3), proc_event("exec", 3, 2)])
    detail = store.event_detail(ids(store)[0])
    assert detail is not None and [s["pid"] for s in detail["ancestry"]] == [3, 2]
    put(store, agent, "t", [proc_event("exec", 1000 + i, 1000 + i - 1)
                            for i in range(MAX_ANCESTRY + 10)])
    detail = store.event_detail(ids(store)[0])
    assert detail is not None and len(detail["ancestry"]) == MAX_ANCESTRY


def test_overview_counts(engine: Engine) -> None:
    now = [NOW]
    store = ControlPlaneStore(engine, clock=lambda: now[0])
    a, b, gone = enrolled(store, "t1"), enrolled(store, "t2"), enrolled(store, "t1")
    store.revoke_agent(gone, author="admin")
    now[0] = NOW + 100                  # enrolment counts as seen: that was 100 s ago
    store.heartbeats([(a, {}, NOW + 95)])
    this_hour = int(NOW * 1000)
    put(store, a, "t1", [alert("R1", "ERROR", proc_event("open", 1, None))] * 3
        + [alert("R2", "WARNING", proc_event("open", 1, None))]
        + [enforce("blocked", "p"), enforce("killed", "p"), enforce("would-block", "p")],
        time_ms=this_hour)
    put(store, a, "t1", [alert("R2", "WARNING", proc_event("open", 1, None))],
        time_ms=this_hour - 2 * HOUR_MS)
    put(store, b, "t2", [alert("R3", "ERROR", proc_event("open", 1, None))],
        time_ms=this_hour)
    put(store, a, "t1", [alert("R9", "ERROR", proc_event("open", 1, None))],
        time_ms=this_hour - 30 * HOUR_MS)          # outside the window
    out = store.overview(hours=24)
    assert out["agents"] == {"online": 1, "offline": 1, "revoked": 1}
    assert len(out["alerts_over_time"]) == 24
    assert out["alerts_over_time"][-1] == {"t": this_hour // HOUR_MS * HOUR_MS, "count": 5}
    assert out["alerts_over_time"][-3]["count"] == 1
    assert sum(b["count"] for b in out["alerts_over_time"]) == 6
    assert out["top_rules"] == [{"rule": "R1", "count": 3}, {"rule": "R2", "count": 2},
                                {"rule": "R3", "count": 1}]
    assert out["blocks"] == 2
    mine = store.overview(tenant="t2", hours=1, connected={b})
    assert mine["agents"] == {"online": 1, "offline": 0, "revoked": 0}
    assert mine["top_rules"] == [{"rule": "R3", "count": 1}] and mine["blocks"] == 0


def test_images_by_verdict(engine: Engine) -> None:
    scans = ScanStore(engine)
    scans.put_verdict(Verdict("sha256:a", "p1", True, [], 1, "a:1", NOW))
    scans.put_verdict(Verdict("sha256:a", "p2", True, [], 1, "a:1", NOW))
    scans.put_verdict(Verdict("sha256:b", "p1", True, [], 1, "b:1", NOW))
    scans.put_verdict(Verdict("sha256:b", "p2", False, ["x"], 1, "b:1", NOW))
    scans.record_reviews([WorkloadReview("c", "ns", "Pod", "w", "u", "CREATE", True, "allow", (
        WorkloadImage("container", "x", "a:1", "sha256:a", "compliant"),
        WorkloadImage("container", "y", "c:1", "sha256:c", "unregistered"),
        WorkloadImage("container", "z", "d:1", "", "unresolved")))])
    scans.add_image("registry.example/e:1")
    assert scans.verdict_counts() == {"compliant": 1, "non-compliant": 1, "unscanned": 2}


def test_revision_0010_fills_the_columns_of_stored_events(tmp_path: Path) -> None:
    engine = db.make_engine(db.database_url(data=tmp_path))
    try:
        db.migrate(engine, "0007")
        trigger = proc_event("exec", 11, 10, ctr=container("web"))
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO cp_event (id, agent_id, tenant, type, time_ms, received_at, "
                "payload) VALUES ('e1', 'a', 't', 'alert', 1, 1, :p), "
                "('e2', 'a', 't', 'exec', 1, 1, :q), ('e3', 'a', 't', 'exec', 1, 1, 'x')"),
                {"p": json.dumps(alert("R", "ERROR", trigger)), "q": json.dumps(trigger)})
        db.migrate(engine)
        store = ControlPlaneStore(engine)
        assert ids(store, rule="R") == [1] and ids(store, container="web") == [2, 1]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT exec_id FROM cp_event ORDER BY seq")
                                ).scalars().all() == [None, "11:1", None]
    finally:
        engine.dispose()


def test_ingest_takes_the_columns_when_it_checks_the_payload() -> None:
    """The server parses a payload once: the row it stores carries the columns."""
    from moray.api.proto import moray_pb2
    from moray.controlplane.server.agentapi import _event_row

    payload = json.dumps(alert("R", "ERROR", proc_event("open", 1, None, ctr=container("c"))))
    row = _event_row(moray_pb2.Event(id="a", type="alert", payload_json=payload.encode()))
    assert not isinstance(row, str) and len(row) == 5
    assert row[4] == event_columns("alert", payload)
    assert (row[4].rule, row[4].container, row[4].image) == ("R", "c", "nginx:1")
