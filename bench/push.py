"""Policy push benchmark with simulated agents: idle server CPU and push latency.

    python bench/push.py [--agents 200 1000] [--backends sqlite postgresql] [--servers 1|2]

N agents are enrolled for real and each keeps its own mutual-TLS gRPC channel and
policy stream (tests/helpers/simagents.py: one asyncio loop in this process, which is
not the server's), with the agent's channel options (keepalive), and sends a heartbeat
every ``--heartbeat`` seconds at a random phase (default 60: an idle agent sends its
unchanged status every HEARTBEAT_EVERY s, agent/controlplane/client.py; ``--heartbeat
10``: every time the agent looks, as agents did before; ``--heartbeat 0``: none). Then:

    idle        the server process's CPU (user + system, % of one core) over ``--idle``
                seconds with every stream open and nothing changing, and its SQL
                statements in that window (moray_db_statements_total)
    push        ``--rounds`` policy applies through the REST API; for each agent, from
                just before the apply request to its acknowledgement stored by the
                server (``acked_at``): p50 / p99 / max over all rounds; and to the
                policy's arrival at the simulated agent

With ``--servers 2`` (PostgreSQL only) the agents are split over two server processes
on one database, applies alternate between them, and idle CPU is per server.
Figures are printed, never asserted. PostgreSQL: tests/helpers/postgres.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moray.agent.controlplane.client import HEARTBEAT_EVERY  # noqa: E402
from moray.agent.controlplane.identity import enroll  # noqa: E402
from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for  # noqa: E402
from tests.helpers.postgres import (  # noqa: E402
    create_database,
    ensure_postgresql,
    postgres_server,
)
from tests.helpers.simagents import SimAgent, SimFleet  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def metric(server: ServerProcess, name: str) -> float:
    for line in server.api()("GET", "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def heartbeats(agents: list[SimAgent], every: float) -> None:
    if every <= 0:
        return
    async def one(agent: SimAgent) -> None:
        await asyncio.sleep(random.uniform(0, every))
        while True:
            with contextlib.suppress(Exception):   # the server counts refusals
                await agent.heartbeat()
            await asyncio.sleep(every)

    await asyncio.gather(*(one(a) for a in agents))


def measure_idle(servers: list[ServerProcess], seconds: float) -> list[tuple[float, float]]:
    """(CPU % of one core, SQL statements/s) of each server over ``seconds``."""
    before = [(cpu_seconds(s.proc.pid), metric(s, "moray_db_statements_total"))  # type: ignore[union-attr]
              for s in servers]
    start = time.monotonic()
    time.sleep(seconds)
    span = time.monotonic() - start
    out = []
    for s, (cpu0, q0) in zip(servers, before, strict=True):
        cpu = (cpu_seconds(s.proc.pid) - cpu0) / span * 100  # type: ignore[union-attr]
        out.append((cpu, (metric(s, "moray_db_statements_total") - q0) / span))
    return out


def run(backend: str, url: str | None, n: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ("--scan-workers", "0", "--scan-poll-seconds", "3600")
        servers = [ServerProcess(work / "s0", database_url=url, extra_args=extra).start()]
        if args.servers == 2:
            (work / "s1").mkdir()
            shutil.copytree(work / "s0" / "pki", work / "s1" / "pki")
            shutil.copy(work / "s0" / "admin.token", work / "s1" / "admin.token")
            servers.append(ServerProcess(work / "s1", database_url=url,
                                         extra_args=extra).start())
        fleet = SimFleet()
        try:
            t0 = time.monotonic()

            def enrol(i: int) -> tuple[int, object]:
                srv = servers[i % len(servers)]
                return i, enroll(srv.enroll_target, srv.api().token(), srv.ca_pem,
                                 work / "agents" / f"a{i}")

            with ThreadPoolExecutor(8) as pool:
                idents = sorted(pool.map(enrol, range(n)), key=lambda x: x[0])
            agents = [fleet.add(servers[i % len(servers)].grpc_target, ident)  # type: ignore[arg-type]
                      for i, ident in idents]
            for k, srv in enumerate(servers):
                want = len(agents[k::len(servers)])
                wait_for(lambda s=srv, w=want: metric(s, "moray_agents_connected") == w,
                         timeout=600, interval=0.5, what="all streams open")
            enrolled = time.monotonic() - t0
            fleet.call(_start(fleet, agents, args.heartbeat))
            # a first policy, so that idle streams hold something
            servers[0].api().apply(policy_yaml("bench", deny="/usr/bin/tool-1"))
            wait_for(lambda: all(a.versions().get("bench") == 1 for a in agents),
                     timeout=600, interval=0.2, what="first policy everywhere")
            time.sleep(2)
            idle = measure_idle(servers, args.idle)
            latencies: list[float] = []
            received: list[float] = []
            for r in range(args.rounds):
                version = r + 2
                srv = servers[r % len(servers)]
                t_apply = time.time()
                srv.api().apply(policy_yaml("bench", deny=f"/usr/bin/tool{r}"))
                ids = {a.agent_id for a in agents}

                def rows(v: int = version, ids: set[str] = ids) -> list[dict[str, object]]:
                    got = [a for a in servers[0].api()("GET", "/api/v1/agents")
                           if a["id"] in ids]
                    done = len(got) == len(ids) and all(
                        a["policies"].get("bench", {}).get("version") == v for a in got)
                    return got if done else []

                # wait on the agents' side first, then read the stored acks (a listing of
                # every agent is heavy for the server: not in a tight loop)
                wait_for(lambda v=version: all(a.versions().get("bench") == v
                                               for a in agents),
                         timeout=600, interval=0.05, what="every agent has the version")
                received += [at - t_apply for a in agents for name, v, _rm, at in a.received
                             if name == "bench" and v == version]
                acked = wait_for(rows, timeout=600, interval=1.0, what="every ack stored")
                latencies += [a["policies"]["bench"]["acked_at"] - t_apply  # type: ignore[index]
                              for a in acked]
            tag = f"{backend}{'x2' if len(servers) == 2 else ''}"
            for k, (cpu, qps) in enumerate(idle):
                print(f"{tag:13} {n:5} agents  server{k} idle CPU {cpu:5.1f} % of a core  "
                      f"{qps:6.2f} SQL statements/s (heartbeats every {args.heartbeat:.0f} s)")
            print(f"{tag:13} {n:5} agents  apply -> every ack stored ({len(latencies)} acks, "
                  f"{args.rounds} rounds): p50 {statistics.median(latencies) * 1000:.0f} ms  "
                  f"p99 {pct(latencies, 99) * 1000:.0f} ms  max {max(latencies) * 1000:.0f} ms"
                  f"  (enrolment + streams open: {enrolled:.0f} s)")
            print(f"{tag:13} {n:5} agents  apply -> policy received by every agent: "
                  f"p50 {statistics.median(received) * 1000:.0f} ms  "
                  f"p99 {pct(received, 99) * 1000:.0f} ms")
            sys.stdout.flush()
        finally:
            fleet.close()
            for s in servers:
                s.stop()


async def _start(fleet: SimFleet, agents: list[SimAgent], every: float) -> None:
    fleet.heartbeat_task = asyncio.get_running_loop().create_task(  # type: ignore[attr-defined]
        heartbeats(agents, every))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"],
                   choices=("sqlite", "postgresql"))
    p.add_argument("--servers", type=int, choices=(1, 2), default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_EVERY,
                   help="seconds between an agent's heartbeats (0: none, to see the cost "
                        "of the streams alone)")
    args = p.parse_args()
    print(f"# {os.cpu_count()} cores; server(s) and simulated agents share them")
    pg = None
    try:
        for backend in args.backends:
            if args.servers == 2 and backend != "postgresql":
                continue
            for n in args.agents:
                url = None
                if backend == "postgresql":
                    if pg is None:
                        if ensure_postgresql() is None:
                            print("postgresql: not installed, skipped")
                            break
                        pg = postgres_server()
                        base = pg.__enter__()
                    url = create_database(base)
                run(backend, url, n, args)
    finally:
        if pg is not None:
            pg.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
