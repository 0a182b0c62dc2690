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

Figures are printed, never asserted. PostgreSQL comes from tests/helpers/postgres.py
(a temporary cluster; Debian's postgresql package).
"""

from __future__ import annotations

import argparse
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
from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for  # noqa: E402
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


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--only", choices=("ingest", "propagation"), default=None)
    args = p.parse_args()
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
