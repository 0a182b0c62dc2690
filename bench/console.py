"""Console data endpoints with a big store: 1,000,000 events, server-side time per page.

    python bench/console.py [--events 1000000] [--reps 15] [--no-postgres] [--no-http]
                            [--explain] [--keep DIR] [--no-sqlite] [--lists-only]

Fills a real SQLite file (and a PostgreSQL database when Debian's postgresql package is
there, as bench/controlplane.py finds it) through the store's own insert path
(``ControlPlaneStore.insert_groups``, 5,000-event transactions of 50 agents' batches):
100 agents in two tenants (90 in ``default``, 10 in ``small`` with 1% of the events),
events over the last 48 h (PostgreSQL: then VACUUM ANALYZE, as autovacuum would), the
agent's mix (opens, execs and forks with parent chains,
exits, connects, syscalls, 3% alerts of 40 rules, 2% enforcement decisions), 30% of
them on the host, the rest in 1,000 containers of 40 images.

Then times, server side, ``--reps`` calls of each: the first page (100 events, newest
first) and a deep page (``before`` = 5% of the newest seq: as far back as paging gets) of
every list filter, a global reader's (every tenant, merged) and a scoped one's; an
event's detail with its ancestry; the overview (24 h and 7 days); and the other list
pages beside the 1M events (``fill_lists``: 5,000 more agents, 10,000 images with their
findings, 200,000 audit entries): agents, images (with filters) and the audit log (with
actor and action filters), first and deep pages, and each old whole list for contrast.
Through a real moray-server over HTTP once more (the first pages, detail, overview, the
list pages). Prints p50 / p95 ms against the target, 300 ms; figures are printed, never
asserted. ``--explain`` prints the query plan of each first page (SQLite EXPLAIN QUERY
PLAN, PostgreSQL EXPLAIN). ``--lists-only``: the list pages only (events filled all the
same).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from moray.controlplane.store import cpevents, db  # noqa: E402
from moray.controlplane.store.cpevents import EventFilter  # noqa: E402
from moray.controlplane.store.cpstore import ControlPlaneStore, EventGroup  # noqa: E402
from tests.helpers.controlplane import ServerProcess  # noqa: E402
from tests.helpers.postgres import (  # noqa: E402
    create_database,
    ensure_postgresql,
    postgres_server,
)

TARGET_MS = 300.0
AGENTS, SMALL_AGENTS = 100, 10
HOURS = 48
TYPES = (("open", 40), ("exec", 12), ("fork", 8), ("exit", 12), ("connect", 15),
         ("syscall", 8), ("alert", 3), ("enforce", 2))
RULES = [f"Rule {i:02d}: {w}" for i, w in enumerate(
    ["Shell in container", "Read sensitive file", "Write below etc", "Outbound to C2",
     "Crypto miner", "Package manager in container", "Netcat reverse shell",
     "Launch privileged container", "Modify shell config", "Ptrace attach"] * 4)]
PRIORITIES = ("CRITICAL", "ERROR", "WARNING", "NOTICE")
IMAGES = [f"registry.example/team{i % 8}/svc{i}:1.{i}" for i in range(40)]
RARE_RULE = "Rare rule: kernel module loaded"


class Fleet:
    """Deterministic agents, containers and process trees that produce the events."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.containers = [
            {"id": f"{i:064x}", "name": f"svc{i % 40}-{i}", "image": IMAGES[i % 40],
             "runtime": "containerd", "image_digest": None, "pod": None, "labels": {}}
            for i in range(1000)]
        self.procs: list[list[tuple[int, str, list[str]]]] = [
            [(1, "1:1", ["/sbin/init"])] for _ in range(AGENTS)]
        self.next_pid = [2] * AGENTS

    def _process(self, agent: int, new: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        live = self.procs[agent]
        parent = live[-self.rng.randint(1, min(len(live), 4))]
        if new:
            pid = self.next_pid[agent]
            self.next_pid[agent] += 1
            args = [f"/usr/bin/tool{pid % 50}", "--flag", f"arg{pid}"]
            live.append((pid, f"{pid}:{pid * 7}", args))
            if len(live) > 400:
                del live[1:100]
            me = live[-1]
        else:
            me = live[-self.rng.randint(1, min(len(live), 20))]
        process = {"pid": me[0], "tid": me[0], "exec_id": me[1], "binary": me[2][0],
                   "args": me[2], "cwd": "/", "comm": me[2][0][-15:], "uid": 0, "euid": 0,
                   "gid": 0, "start_time": "2026-12-07T10:00:00Z", "cgroup_id": 4242,
                   "mntns": 4026531840}
        return process, {"pid": parent[0], "exec_id": parent[1], "binary": parent[2][0]}

    def event(self, agent: int, kind: str, when: str) -> dict[str, Any]:
        rng = self.rng
        ctr = None if rng.random() < 0.3 else self.containers[(agent * 10 + rng.randint(0, 9))
                                                              % len(self.containers)]
        process, parent = self._process(agent, kind in ("exec", "fork"))
        base: dict[str, Any] = {"type": kind, "time": when, "node": f"node-{agent:03d}",
                                "process": process, "parent": parent, "container": ctr}
        if kind == "open":
            base["file"] = {"path": f"/etc/conf{rng.randint(0, 99)}", "flags": ["O_RDONLY"],
                            "access": "read", "result": 0, "error": None, "fd": 3}
        elif kind == "exec":
            base["exec"] = {"argc": 3, "args_truncated": False, "binary_truncated": False}
        elif kind in ("connect", "enforce"):
            base["network"] = {"family": "ipv4", "protocol": "tcp", "saddr": "10.0.0.2",
                               "sport": 40000, "daddr": "203.0.113.9", "dport": 443}
        if kind == "enforce":
            base["enforcement"] = {"action": rng.choice(("blocked", "killed", "would-block")),
                                   "kind": "egress", "tier": "lsm",
                                   "policy": "egress-lockdown", "rule": "egress.deny"}
        elif kind == "syscall":
            base["syscall"] = {"name": "ptrace", "nr": 101, "result": 0, "error": None}
        if kind != "alert":
            return base
        rule = RARE_RULE if rng.random() < 0.0005 else RULES[
            min(int(rng.expovariate(0.15)), len(RULES) - 1)]
        trigger = {**base, "type": "open"}
        return {"type": "alert", "time": when, "node": base["node"], "rule": rule,
                "priority": PRIORITIES[hash(rule) % 4], "severity": 4, "tags": ["t"],
                "mitre": [], "output": f"{rule} by {process['args'][0]}", "source": "x:1",
                "event": trigger, "ancestry": [], "response": None}


def fill(store: ControlPlaneStore, total: int, now_ms: int) -> tuple[list[str], float]:
    """``total`` events through insert_groups; returns the agents and events/s."""
    agents = []
    for i in range(AGENTS):
        tenant = "small" if i < SMALL_AGENTS else "default"
        token = store.create_enrollment_token(tenant=tenant, labels={}, author="bench")
        agents.append(store.enroll_agent(token, hostname=f"node-{i:03d}", labels={},
                                         issue=lambda a: (f"s-{a}", "sha")).id)
    fleet = Fleet()
    kinds, weights = [k for k, _ in TYPES], [w for _, w in TYPES]
    # the small tenant's agents send 1% of the events
    agent_weights = [0.1 if i < SMALL_AGENTS else 1.1 for i in range(AGENTS)]
    start_ms = now_ms - HOURS * 3_600_000
    made, started = 0, time.perf_counter()
    while made < total:
        per_agent: dict[int, list[tuple[str, int, str, str]]] = {}
        n = min(5000, total - made)
        for k, i in enumerate(fleet.rng.choices(range(AGENTS), agent_weights, k=n)):
            kind = fleet.rng.choices(kinds, weights)[0]
            ms = start_ms + (made + k) * (now_ms - start_ms) // total
            payload = orjson.dumps(fleet.event(i, kind, str(ms))).decode()
            per_agent.setdefault(i, []).append((f"b{made + k}", ms, kind, payload))
        groups: list[EventGroup] = [(agents[i], "small" if i < SMALL_AGENTS else "default",
                                     rows) for i, rows in per_agent.items()]
        store.insert_groups(groups)
        made += n
        if made % 100_000 == 0:
            print(f"  {made:>9,} events stored", flush=True)
    return agents, total / (time.perf_counter() - started)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    fn()                                              # warm the cache once
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), pct(times, 95)


def row(name: str, p50: float, p95: float) -> None:
    mark = "ok" if p95 <= TARGET_MS else "OVER"
    print(f"  {name:58} {p50:9.1f} {p95:9.1f}   <= {TARGET_MS:.0f}  {mark}", flush=True)


def filters(engine: Engine, agents: list[str]) -> list[tuple[str, EventFilter]]:
    with engine.connect() as c:
        common_rule = c.execute(text("SELECT rule FROM cp_event WHERE type = 'alert' "
                                     "GROUP BY rule ORDER BY count(*) DESC LIMIT 1")).scalar()
        ctr = c.execute(text("SELECT container, image FROM cp_event "
                             "WHERE container IS NOT NULL ORDER BY seq DESC LIMIT 1")).one()
    last_hour = int(time.time() * 1000) - 3_600_000
    out = [("all", EventFilter()), ("type=alert", EventFilter(type="alert")),
           ("type=exec", EventFilter(type="exec")),
           ("rule=<most common>", EventFilter(rule=common_rule)),
           ("rule=<rare, ~0.05% of alerts>", EventFilter(rule=RARE_RULE)),
           ("priority=CRITICAL", EventFilter(priority="CRITICAL")),
           ("container=<name>", EventFilter(container=ctr[0])),
           ("image=<image>", EventFilter(image=ctr[1])),
           ("node=node-050 (its agent's host name)", EventFilter(node="node-050")),
           ("agent=<id>", EventFilter(agent_id=agents[50])),
           ("since_ms=<1 h ago>", EventFilter(since_ms=last_hour)),
           ("type=alert&since_ms=<1 h ago>", EventFilter(type="alert", since_ms=last_hour)),
           ("type=exec&container=<name>", EventFilter(type="exec", container=ctr[0])),
           ("until_ms=<24 h ago> (an old window)",
            EventFilter(until_ms=last_hour - 23 * 3_600_000))]
    scoped = [(f"tenant=small {n}", EventFilter(**{**_fields(f), "tenant": "small"}))
              for n, f in out if f.agent_id is None]
    return out + scoped


def _fields(f: EventFilter) -> dict[str, Any]:
    return {k: getattr(f, k) for k in EventFilter.__slots__}


def explain(engine: Engine, store: ControlPlaneStore, cases: list[tuple[str, EventFilter]]
            ) -> None:
    for name, where in cases:
        with store._read() as session:        # the bench looks inside
            arms = cpevents.scan_arms(session, where)
            if not arms:
                continue
            stmt = cpevents.page_statement(where, arms, before=None, after=0, limit=101,
                                           newest_first=True)
        sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
        prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        with engine.connect() as c:
            plan = [" | ".join(str(x) for x in r) for r in c.execute(text(prefix + sql))]
        print(f"  -- {name}")
        for line in plan:
            print(f"       {line}")


def measure(store: ControlPlaneStore, engine: Engine, agents: list[str], reps: int,
            explain_plans: bool) -> None:
    cases = filters(engine, agents)
    newest = store.count_events() and store.event_page(EventFilter(), limit=1)[0][0]["seq"]
    deep = max(1, int(newest * 0.05))
    print(f"  {'server side (store)':58} {'p50 ms':>9} {'p95 ms':>9}")
    for name, where in cases:
        p50, p95 = timed(lambda w=where: store.event_page(w, limit=100), reps)
        row(f"first page  {name}", p50, p95)
        p50, p95 = timed(lambda w=where: store.event_page(w, before=deep, limit=100), reps)
        row(f"deep page   {name}", p50, p95)
    with engine.connect() as c:
        alerts = c.execute(text("SELECT seq FROM cp_event WHERE type = 'alert' "
                                "ORDER BY seq DESC LIMIT 50")).scalars().all()
    picks = iter(alerts * (reps + 2))
    p50, p95 = timed(lambda: store.event_detail(next(picks)), reps)
    row("event detail (an alert, with ancestry)", p50, p95)
    for hours in (24, 168):
        p50, p95 = timed(lambda h=hours: store.overview(hours=h), reps)
        row(f"overview hours={hours} (every tenant)", p50, p95)
        p50, p95 = timed(lambda h=hours: store.overview(tenant="small", hours=h), reps)
        row(f"overview hours={hours} tenant=small", p50, p95)
    detail = store.event_detail(alerts[0])
    depth = len(detail["ancestry"]) if detail else 0
    print(f"  (the detail's ancestry: {depth} processes)")
    if explain_plans:
        explain(engine, store, cases)


def over_http(server: ServerProcess, cases: list[tuple[str, EventFilter]], seq: int,
              reps: int) -> None:
    api = server.api()
    print(f"  {'through moray-server over HTTP':58} {'p50 ms':>9} {'p95 ms':>9}")
    for name, where in cases:
        query = {"page": 1, "limit": 100, **{("agent" if k == "agent_id" else k): v
                                              for k, v in _fields(where).items()
                                              if v is not None}}
        p50, p95 = timed(lambda q=query: api.http.get("/api/v1/events", params=q)
                         .raise_for_status(), reps)
        row(f"GET /api/v1/events {name}", p50, p95)
    p50, p95 = timed(lambda: api.http.get(f"/api/v1/events/{seq}").raise_for_status(), reps)
    row("GET /api/v1/events/{seq}", p50, p95)
    p50, p95 = timed(lambda: api.http.get("/api/v1/overview").raise_for_status(), reps)
    row("GET /api/v1/overview", p50, p95)


LIST_AGENTS, LIST_IMAGES, AUDIT_ENTRIES = 5000, 10_000, 200_000
ACTIONS = ("policy.apply", "policy.delete", "policy.rollback", "agent.labels", "agent.revoke",
           "enrollment_token.issue", "token.create", "user.create", "user.login",
           "registry.create", "scan.request", "admission.decision")
SEVERITIES = ("critical", "high", "medium", "low", "unknown")


def fill_lists(engine: Engine, now: float) -> None:
    """The lists at scale, written in bulk to the store's own tables: 5,000 more agents
    (10% in ``small``, each with 2 policy acknowledgements), 10,000 images with two
    verdicts each (a third failed), ~20 vulnerabilities (id + alias rows), a report with
    secret and malware counts (1,000 of them ``small``'s), and 200,000 audit entries of
    60 actors and 12 actions (10% ``small``'s)."""
    from moray.controlplane.store.models import Agent, AgentPolicy, Audit
    from moray.controlplane.store.scanmodels import (
        image_report,
        image_tenant,
        image_verdict,
        image_vuln,
    )

    rng = random.Random(11)
    agents = [{"id": f"list-{i:05d}", "tenant": "small" if i % 10 == 0 else "default",
               "hostname": f"host-{i:05d}", "labels": {"env": "prod", "rack": str(i % 40)},
               "cert_serial": f"ls-{i}", "cert_sha256": "x", "enrolled_at": now - 1e6 + i,
               "last_seen": now, "status": {"agent_version": "0.1.0",
                                            "tiers": {"exec": "lsm", "file": "lsm"}},
               "kind": "agent"} for i in range(LIST_AGENTS)]
    acks = [{"agent_id": a["id"], "policy_name": name, "version": 3, "status": "applied",
             "error": "", "tiers": {"exec.deny": "lsm"}, "acked_at": now}
            for a in agents for name in ("web", "base")]
    verdicts, vulns, reports, owners = [], [], [], []
    for i in range(LIST_IMAGES):
        digest = f"sha256:{i:064x}"
        image = f"registry.example/team{i % 50}/app{i}:{i % 7}"
        for policy in ("base", "strict"):
            verdicts.append({"image_digest": digest, "policy": policy,
                             "passed": not (policy == "strict" and i % 3 == 0),
                             "reasons": "[]", "vulndb_generation": 1, "image": image,
                             "created": now - i, "config_digest": ""})
        for k in range(rng.randint(0, 40)):
            advisory = f"CVE-2026-{k:05d}"
            for vid in (advisory, f"DSA-{k}"):
                vulns.append({"image_digest": digest, "vuln_id": vid, "advisory": advisory,
                              "severity": SEVERITIES[k % 5], "package": f"pkg{k}",
                              "version": "1.0", "fixed_version": "1.1"})
        reports.append({"image_digest": digest, "findings": "{}", "secrets": i % 4,
                        "malware": int(i % 97 == 0), "sbom": "", "created": now})
        if i % 10 == 0:
            owners.append({"tenant": "small", "image_digest": digest, "first_seen": now})
    names = [f"user{i}" for i in range(20)]
    audit = []
    for i in range(AUDIT_ENTRIES):
        name = rng.choice(names)
        actor = rng.choice((f"admin:{name}", f"operator:user:{name}", "moray-server"))
        audit.append({"at": now - AUDIT_ENTRIES + i, "actor": actor,
                      "action": ACTIONS[min(int(rng.expovariate(0.4)), len(ACTIONS) - 1)],
                      "target": f"t{i % 500}", "detail": {},
                      "tenant": "small" if i % 10 == 0 else None})
    with engine.begin() as c:
        c.execute(Agent.__table__.insert(), agents)       # type: ignore[attr-defined]
        c.execute(AgentPolicy.__table__.insert(), acks)   # type: ignore[attr-defined]
        c.execute(image_verdict.insert(), verdicts)
        for k in range(0, len(vulns), 50_000):
            c.execute(image_vuln.insert(), vulns[k:k + 50_000])
        c.execute(image_report.insert(), reports)
        c.execute(image_tenant.insert(), owners)
        for k in range(0, len(audit), 50_000):
            c.execute(Audit.__table__.insert(), audit[k:k + 50_000])  # type: ignore[attr-defined]
    print(f"  lists: {LIST_AGENTS:,} agents, {LIST_IMAGES:,} images ({len(vulns):,} "
          f"vulnerability rows), {AUDIT_ENTRIES:,} audit entries", flush=True)


def list_cases(store: ControlPlaneStore) -> list[tuple[str, str, dict[str, Any],
                                                      Callable[[], Any]]]:
    """(name, REST path, its query, the store call) of each list page measured."""
    from moray.controlplane.store.scanstore import ScanStore

    scans = ScanStore(store.engine)
    deep_agent = f"list-{LIST_AGENTS - 200:05d}"
    deep_image = f"sha256:{LIST_IMAGES - 100:064x}"
    big = 2**63 - 1
    return [
        ("agents first page (100)", "/api/v1/agents", {"page": 1, "limit": 100},
         lambda: store.agent_page(None, limit=100)),
        ("agents deep page (after the 4,800th)", "/api/v1/agents",
         {"after": deep_agent, "limit": 100},
         lambda: store.agent_page(None, after=deep_agent, limit=100)),
        ("agents tenant=small", "/api/v1/agents", {"page": 1, "limit": 100, "tenant": "small"},
         lambda: store.agent_page("small", limit=100)),
        ("agents whole list (old shape, 5,100)", "/api/v1/agents", {},
         store.agents),
        ("images first page (50)", "/api/v1/images", {"page": 1, "limit": 50},
         lambda: scans.image_page(None, limit=50)),
        ("images deep page", "/api/v1/images", {"after": deep_image, "limit": 50},
         lambda: scans.image_page(None, after=deep_image, limit=50)),
        ("images verdict=fail", "/api/v1/images", {"page": 1, "limit": 50, "verdict": "fail"},
         lambda: scans.image_page(None, limit=50, passed=False)),
        ("images name=app999 (4 of 10,000)", "/api/v1/images",
         {"page": 1, "limit": 50, "name": "app999"},
         lambda: scans.image_page(None, limit=50, name="app999")),
        ("images tenant=small", "/api/v1/images", {"page": 1, "limit": 50, "tenant": "small"},
         lambda: scans.image_page("small", limit=50)),
        ("images whole list (old shape, 10,000)", "/api/v1/images", {},
         scans.image_summaries),
        ("audit first page (50)", "/api/v1/audit", {"page": 1, "limit": 50},
         lambda: store.audit_log(before_id=big, limit=51)),
        ("audit actor=user7", "/api/v1/audit", {"page": 1, "limit": 50, "actor": "user7"},
         lambda: store.audit_log(before_id=big, limit=51, actor="user7")),
        ("audit action=registry.create (rare)", "/api/v1/audit",
         {"page": 1, "limit": 50, "action": "registry.create"},
         lambda: store.audit_log(before_id=big, limit=51, action="registry.create")),
        ("audit action=user. (a prefix)", "/api/v1/audit",
         {"page": 1, "limit": 50, "action": "user."},
         lambda: store.audit_log(before_id=big, limit=51, action="user.")),
        ("audit tenant=small actor=user7", "/api/v1/audit",
         {"page": 1, "limit": 50, "actor": "user7", "tenant": "small"},
         lambda: store.audit_log(before_id=big, limit=51, actor="user7", tenant="small")),
    ]


def measure_lists(store: ControlPlaneStore, reps: int) -> None:
    print(f"  {'lists, server side (store)':58} {'p50 ms':>9} {'p95 ms':>9}")
    for name, _, _, call in list_cases(store):
        p50, p95 = timed(call, reps)
        row(name, p50, p95)


def lists_over_http(server: ServerProcess, store: ControlPlaneStore, reps: int) -> None:
    api = server.api()
    print(f"  {'lists through moray-server over HTTP':58} {'p50 ms':>9} {'p95 ms':>9}")
    for name, path, query, _ in list_cases(store):
        p50, p95 = timed(lambda p=path, q=query: api.http.get(p, params=q)
                         .raise_for_status(), reps)
        row(f"GET {name}", p50, p95)


@contextlib.contextmanager
def backend(name: str, work: Path, pg_base: str | None) -> Iterator[tuple[Engine, str | None]]:
    url = create_database(pg_base) if pg_base else None
    engine = db.make_engine(db.database_url(url, data=work))
    db.migrate(engine)
    try:
        yield engine, url
    finally:
        engine.dispose()


def run(name: str, work: Path, pg_base: str | None, args: argparse.Namespace) -> None:
    print(f"{name}: {args.events:,} events", flush=True)
    with backend(name, work, pg_base) as (engine, url):
        store = ControlPlaneStore(engine)
        if args.keep and pg_base is None and store.count_events():
            agents = [a.id for a in store.agents() if not a.id.startswith("list-")]
            print(f"  reused {store.count_events():,} events in {args.keep}")
        else:
            agents, rate = fill(store, args.events, int(time.time() * 1000))
            print(f"  filled at {rate:,.0f} events/s through insert_groups", flush=True)
            fill_lists(engine, time.time())
            agents = agents[:AGENTS]
            if pg_base is not None:
                # what autovacuum does to a table that has been there a while: index-only
                # scans need the visibility map (before it, an old window's page read
                # 500,000 heap tuples: ~0.5 s)
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    for table in ("cp_event", "cp_agent", "cp_agent_policy", "cp_audit",
                                  "image_verdict", "image_vuln", "image_report",
                                  "image_tenant"):
                        c.execute(text(f"VACUUM (ANALYZE) {table}"))
        if name == "sqlite":
            size = (work / "moray.db").stat().st_size / 2**20
            print(f"  database file {size:,.0f} MiB")
        if not args.lists_only:
            measure(store, engine, agents, args.reps, args.explain)
        measure_lists(store, args.reps)
        if args.no_http:
            return
        server = ServerProcess(work, database_url=url).start()
        try:
            if not args.lists_only:
                newest = store.event_page(EventFilter(type="alert"), limit=1)[0][0]["seq"]
                over_http(server, filters(engine, agents)[:15], newest, args.reps)
            lists_over_http(server, store, args.reps)
        finally:
            server.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--no-sqlite", action="store_true")
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--lists-only", action="store_true",
                   help="measure the agents, images and audit lists only (the events are "
                   "filled all the same)")
    p.add_argument("--keep", default=None, help="directory for the SQLite file (kept; "
                   "measured again without filling when it has events)")
    args = p.parse_args()
    if not args.no_sqlite:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            run("sqlite", Path(args.keep), None, args)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                run("sqlite", Path(tmp), None, args)
    if not args.no_postgres:
        if ensure_postgresql() is None:
            print("postgresql: not available, skipped")
            return 0
        with postgres_server() as base, tempfile.TemporaryDirectory() as tmp:
            run("postgresql", Path(tmp), base, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
