"""Control plane benchmark: event ingest rate into SQLite and PostgreSQL, and policy
propagation latency to many agents.

    python bench/controlplane.py [--agents 200] [--events 50000] [--no-postgres]

    ingest-<db>     events/s stored by a real moray-server, sent as 500-event batches over
                    mTLS by 4 concurrent event streams (each batch committed before its
                    ack), and end to end from 4 ControlPlaneClients (spool + fsync + ack)
    propagation     N agents (ControlPlaneClient, one process, one thread set each) on
                    loopback; `moray policy apply` ten times; latency to each agent's
                    acknowledgement stored by the server, from the start of the apply
                    command (includes the CLI's start-up) and from the version's
                    creation in the store: p50 / p99 / max

    --fleet         simulated agents (one connection and real mTLS per agent, in --sims
                    processes apart from the server; --sim go: bench/cpsim_go, grpc-go,
                    the default; --sim python: bench/cpsim.py, asyncio gRPC, whose client
                    side costs 2.4x the CPU per push at 5,000 agents), side by side direct and
                    through --gateways moray-gateway processes: push latency (apply ->
                    every ack stored, p50/p99 over --rounds applies) and the CPU seconds
                    each process spent per push, idle CPU of the server, each gateway and
                    each simulator (% of one core over --idle seconds, every agent
                    connected, heartbeats as an idle agent sends them: its unchanged
                    status every 60 s), events
                    stored/s from every agent at once (--events-per-agent, --batch) and
                    that none was lost

Figures are printed, never asserted. PostgreSQL comes from tests/helpers/postgres.py
(a temporary cluster; Debian's postgresql package).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from moray.agent.controlplane import ApplyResult, ControlPlaneClient, VerifiedPolicy  # noqa: E402
from moray.agent.controlplane.identity import enroll  # noqa: E402
from moray.api.proto import moray_pb2, moray_pb2_grpc  # noqa: E402
from tests.helpers.controlplane import (  # noqa: E402
    GatewayProcess,
    ServerProcess,
    policy_yaml,
    wait_for,
)
from tests.helpers.postgres import (  # noqa: E402
    create_database,
    ensure_postgresql,
    postgres_server,
)

DELIVERED: dict[tuple[str, int], list[float]] = {}


def _ok(policy: VerifiedPolicy) -> ApplyResult:
    DELIVERED.setdefault((policy.name, policy.version), []).append(time.time())
    return ApplyResult(ok=True)


def ingest_raw(server: ServerProcess, work: Path, total: int, streams: int = 4,
               batch: int = 500) -> float:
    idents = [enroll(server.enroll_target, server.api().token(), server.ca_pem,
                     work / f"raw{i}") for i in range(streams)]
    payload = b'{"type":"exec","process":{"pid":1234,"binary":"/usr/bin/true"}}'
    per = total // streams

    def run(i: int) -> None:
        with grpc.secure_channel(server.grpc_target, idents[i].channel_credentials()) as ch:
            stub = moray_pb2_grpc.AgentServiceStub(ch)

            def batches() -> Iterator[moray_pb2.EventBatch]:
                for b in range(0, per, batch):
                    yield moray_pb2.EventBatch(batch_id=b, events=[
                        moray_pb2.Event(id=uuid.uuid4().hex, time_ms=int(time.time() * 1000),
                                        type="exec", payload_json=payload)
                        for _ in range(min(batch, per - b))])
            for _ack in stub.Events(batches()):
                pass

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * streams / (time.perf_counter() - start)


def ingest_clients(server: ServerProcess, work: Path, total: int, clients: int = 4) -> float:
    cs = []
    for i in range(clients):
        c = ControlPlaneClient(server.grpc_target, work / f"c{i}", _ok,
                               token=server.api().token(), ca_pem=server.ca_pem,
                               enroll_server=server.enroll_target, heartbeat_interval=30)
        c.start()
        cs.append(c)
    wait_for(lambda: all(c.identity for c in cs), timeout=30)
    per = total // clients
    for c in cs:           # spool first (the server is fast enough that order won't matter)
        for b in range(0, per, 500):
            c.send_many([{"type": "exec", "n": n} for n in range(b, min(per, b + 500))])
    before = server_events(server)
    start = time.perf_counter()
    wait_for(lambda: all(c.spool.stats().records == 0 for c in cs), timeout=600,
             interval=0.05)
    rate = (server_events(server) - before) / (time.perf_counter() - start)
    for c in cs:
        c.stop()
    return rate


def server_events(server: ServerProcess) -> float:
    for line in server.api()("GET", "/metrics").splitlines():
        if line.startswith("moray_events_ingested_total "):
            return float(line.split()[1])
    return 0.0


def propagation(server: ServerProcess, work: Path, agents: int, rounds: int = 10
                ) -> tuple[list[float], list[float], list[float]]:
    api = server.api()
    DELIVERED.clear()
    clients = []
    for i in range(agents):
        c = ControlPlaneClient(server.grpc_target, work / f"a{i}", _ok, token=api.token(),
                               ca_pem=server.ca_pem, enroll_server=server.enroll_target,
                               heartbeat_interval=60)
        c.start()
        clients.append(c)
    wait_for(lambda: len([a for a in api("GET", "/api/v1/agents") if a["connected"]])
             == agents, timeout=300, interval=0.5, what="all agents connected")
    latencies: list[float] = []
    from_store: list[float] = []
    delivered: list[float] = []
    path = work / "bench.yaml"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MORAY_SERVER": server.url,
           "MORAY_TOKEN": server.admin_token}
    for r in range(rounds):
        path.write_text(policy_yaml("bench", deny=f"/usr/bin/tool{r}"))
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "moray.controlplane.cli", "policy", "apply",
                        str(path)],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        version = r + 1
        ids = {c.identity.agent_id for c in clients if c.identity}

        def acked(v: int = version, ids: set[str] = ids) -> list[dict[str, Any]]:
            rows = [a for a in api("GET", "/api/v1/agents") if a["id"] in ids]
            done = all(a["policies"].get("bench", {}).get("version") == v for a in rows)
            return rows if done else []

        rows = wait_for(acked, timeout=120, interval=0.1, what="every agent acknowledged")
        created = api("GET", "/api/v1/policies/bench")["created_at"]
        latencies += [a["policies"]["bench"]["acked_at"] - t0 for a in rows]
        from_store += [a["policies"]["bench"]["acked_at"] - created for a in rows]
        delivered += [t - created for t in DELIVERED.get(("bench", version), [])]
    for c in clients:
        c.stop()
    return latencies, from_store, delivered


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- fleet: simulated agents, direct vs through gateways --------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Db:
    """Read-only queries on the server's database (SQLite file or PostgreSQL)."""

    def __init__(self, server: ServerProcess) -> None:
        from moray.controlplane.store import db

        self.engine = db.make_engine(db.database_url(server.database_url, server.data_dir))

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> int:
        return int(self.rows(sql, **params)[0][0])

    def close(self) -> None:
        self.engine.dispose()


class _Sims:
    """The simulated agents: ``n`` processes of bench/cpsim.py."""

    def __init__(self, server: ServerProcess, work: Path, agents: int, procs: int,
                 kind: str = "python") -> None:
        from moray.controlplane.store import db
        from moray.controlplane.store.cpstore import ControlPlaneStore

        engine = db.make_engine(db.database_url(server.database_url, server.data_dir))
        store = ControlPlaneStore(engine)
        per = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
        self.procs: list[subprocess.Popen[str]] = []
        for i, count in enumerate(per):
            tokens = work / f"tokens{i}"
            if not (work / f"sim{i}" / "identities.json").exists():
                tokens.write_text("\n".join(
                    store.create_enrollment_token(tenant="default", labels={}, author="bench")
                    for _ in range(count)))
            self.procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "cpsim.py"), "--dir", str(work / f"sim{i}"),
                 "--count", str(count), "--enroll", server.enroll_target, "--ca",
                 str(server.data_dir / "pki" / "ca.pem"), "--tokens", str(tokens)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}))
        engine.dispose()
        self.answers("enrolled")
        if kind == "go":
            # the same identities, the same commands, grpc-go's cost per message
            binary = subprocess.run([str(ROOT / "bench" / "cpsim_go" / "build")], check=True,
                                    capture_output=True, text=True).stdout.split()[-1]
            self.stop()
            self.procs = [subprocess.Popen(
                [binary, "--dir", str(work / f"sim{i}"), "--ca",
                 str(server.data_dir / "pki" / "ca.pem")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                for i in range(len(per))]
            self.answers("enrolled")

    def command(self, line: str, answer: str) -> list[str]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        return self.answers(answer)

    def answers(self, word: str) -> list[str]:
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            got = proc.stdout.readline()
            if not got.startswith(word):
                raise RuntimeError(f"simulator said {got!r}, expected {word}")
            out.append(got)
        return out

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _metric(server: ServerProcess, name: str) -> float:
    for line in server.api()("GET", "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _fleet_mode(server: ServerProcess, sims: _Sims, endpoints: list[str], pids: dict[str, int],
                agents: int, args: argparse.Namespace, label: str, rnd: list[int]) -> None:
    sims.command("connect " + ",".join(endpoints), "connecting")
    t_conn = time.perf_counter()
    wait_for(lambda: _metric(server, "moray_agents_connected") >= agents, timeout=900,
             interval=1.0, what="every simulated agent connected")
    connect_s = time.perf_counter() - t_conn
    time.sleep(3)
    # every process, the simulators' included (the client side)
    everyone = {**pids, **{f"sim{i}": p.pid for i, p in enumerate(sims.procs)}}
    before = {k: _cpu_seconds(p) for k, p in everyone.items()}
    time.sleep(args.idle)
    idle = {k: 100 * (_cpu_seconds(p) - before[k]) / args.idle for k, p in everyone.items()}
    api = server.api()
    conn = _Db(server)
    lat: list[float] = []
    answered: list[float] = []   # apply -> the REST answer (version stored and signed)
    before = {k: _cpu_seconds(p) for k, p in everyone.items()}
    for _ in range(args.rounds):
        rnd[0] += 1
        t0 = time.time()
        version = api.apply(policy_yaml("fleet", deny=f"/usr/bin/tool{rnd[0]}"))["version"]
        answered.append(time.time() - t0)

        def acked(v: int = version) -> bool:
            return conn.scalar("SELECT count(*) FROM cp_agent_policy WHERE "
                               "policy_name='fleet' AND version=:v", v=v) >= agents
        wait_for(acked, timeout=300, interval=0.05, what="every ack stored")
        lat += [r[0] - t0 for r in conn.rows(
            "SELECT acked_at FROM cp_agent_policy WHERE policy_name='fleet' AND version=:v",
            v=version)]
        time.sleep(1)
    push_cpu = "  ".join(f"{k} {(_cpu_seconds(p) - before[k]) / args.rounds:.2f} s"
                         for k, p in everyone.items())
    print(f"  ({label}: idle and push done: p50 {statistics.median(lat) * 1000:.0f} ms, "
          f"p99 {pct(lat, 99) * 1000:.0f} ms; idle {idle})", flush=True)
    count0 = conn.scalar("SELECT count(*) FROM cp_event")
    t0 = time.perf_counter()
    done = sims.command(f"events {args.events_per_agent // args.batch} {args.batch}",
                        "events-done")
    sent = sum(int(d.split()[1]) for d in done)
    retries = "+".join(d.split()[3] for d in done)
    wait_for(lambda: conn.scalar("SELECT count(*) FROM cp_event") - count0
             >= sent, timeout=300, interval=0.1, what="every event stored")
    rate = sent / (time.perf_counter() - t0)
    stored = conn.scalar("SELECT count(*) FROM cp_event") - count0
    conn.close()
    sims.command("disconnect", "disconnected")
    wait_for(lambda: _metric(server, "moray_agents_connected") == 0, timeout=120,
             interval=0.5, what="agents gone")
    cpu = "  ".join(f"{k} {v:.1f} %" for k, v in idle.items())
    print(f"fleet-{label:22} {agents} agents: connect {connect_s:.0f} s | idle CPU {cpu} | "
          f"push apply->every ack stored ({len(lat)} acks): p50 "
          f"{statistics.median(lat) * 1000:.0f} ms  p99 {pct(lat, 99) * 1000:.0f} ms  max "
          f"{max(lat) * 1000:.0f} ms (apply answered: p50 "
          f"{statistics.median(answered) * 1000:.0f} ms), CPU per push {push_cpu} | "
          f"events {rate:.0f}/s stored, {sent} sent, {stored} stored (lost {sent - stored}) | "
          f"failed calls retried by the agents, policy/heartbeat/events per simulator: "
          f"{retries}")
    sys.stdout.flush()


def fleet(args: argparse.Namespace) -> None:
    for backend in args.fleet_db.split(","):
        if backend == "postgresql":
            if ensure_postgresql() is None:
                print("fleet-postgresql: PostgreSQL not available, skipped")
                continue
            with postgres_server() as base:
                _fleet_backend(args, backend, create_database(base))
        else:
            _fleet_backend(args, backend, None)


def _fleet_backend(args: argparse.Namespace, backend: str, url: str | None) -> None:
    # --work: the run's files (logs of server, gateways) are kept there
    with (contextlib.nullcontext(tempfile.mkdtemp(dir=args.work)) if args.work
          else tempfile.TemporaryDirectory()) as tmp:
        work = Path(tmp)
        server = ServerProcess(work / "server", database_url=url,
                               extra_args=("--scan-workers", "0")).start()
        sims = None
        gateways: list[GatewayProcess] = []
        try:
            t0 = time.perf_counter()
            sims = _Sims(server, work, args.agents, args.sims, args.sim)
            print(f"fleet-{backend}: {args.agents} agents enrolled in "
                  f"{time.perf_counter() - t0:.0f} s ({args.sims} {args.sim} simulator processes, "
                  f"{os.cpu_count()} cores)")
            assert server.proc is not None
            rnd = [0]
            for mode in args.modes.split(","):
                if mode == "direct":
                    _fleet_mode(server, sims, [server.grpc_target], {"server": server.proc.pid},
                                args.agents, args, f"{backend}-direct", rnd)
                    continue
                gateways = [GatewayProcess(work / f"gw{i}", server, f"gw{i}").start()
                            for i in range(args.gateways)]
                pids = {"server": server.proc.pid,
                        **{f"gw{i}": g.proc.pid for i, g in enumerate(gateways) if g.proc}}
                _fleet_mode(server, sims, [g.target for g in gateways], pids, args.agents,
                            args, f"{backend}-{args.gateways}-gateways", rnd)
                for g in gateways:
                    g.stop()
                gateways = []
        finally:
            if sims is not None:
                sims.stop()
            for g in gateways:
                g.stop()
            server.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--only", choices=("ingest", "propagation"), default=None)
    p.add_argument("--fleet", action="store_true", help="simulated agents, direct vs gateways")
    p.add_argument("--modes", default="direct,gateways", help="--fleet: direct,gateways")
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--sims", type=int, default=2, help="--fleet: simulator processes")
    p.add_argument("--sim", choices=("go", "python"), default="go",
                   help="--fleet: simulated agents in Go (bench/cpsim_go, built from Debian's "
                        "packages) or in Python (bench/cpsim.py)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--events-per-agent", type=int, default=100)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--work", default=None, help="--fleet: directory for the run's files")
    p.add_argument("--fleet-db", default="sqlite", help="--fleet: sqlite,postgresql")
    args = p.parse_args()
    if args.fleet:
        fleet(args)
        return 0
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    pg = None
    if not args.no_postgres and ensure_postgresql() is not None:
        pg = postgres_server()
        backends.append(("postgresql", create_database(pg.__enter__())))
    try:
        for name, url in backends:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                server = ServerProcess(work / "server", database_url=url).start()
                try:
                    if args.only != "propagation":
                        raw = ingest_raw(server, work, args.events)
                        e2e = ingest_clients(server, work, args.events // 2)
                        print(f"ingest-{name:10}  {raw:10.0f} events/s (4 streams, 500/batch)"
                              f"   {e2e:10.0f} events/s end to end (4 agents, spool+fsync)")
                    if args.only == "ingest":
                        continue
                    lat, stored, delivered = propagation(server, work, args.agents)
                    for what, xs in (("apply command -> ack stored", lat),
                                     ("version stored -> ack stored", stored),
                                     ("version stored -> on_policy", delivered)):
                        print(f"propagation-{name:10} {args.agents} agents, {len(xs)} acks, "
                              f"{what}: p50 {statistics.median(xs) * 1000:.0f} ms  "
                              f"p99 {pct(xs, 99) * 1000:.0f} ms  max {max(xs) * 1000:.0f} ms")
                    sys.stdout.flush()
                finally:
                    server.stop()
    finally:
        if pg is not None:
            pg.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
