"""Admission webhook benchmark: decision latency over HTTPS, as the API server sees it.

    python bench/kube_webhook.py [--rate 200] [--seconds 15] [--scans 3]

Starts Debian's docker-registry on 127.0.0.1, a moray-server (SQLite, one scan worker
thread) and one ``moray kube-enforcer`` process (HTTPS, certificate from the server's
CA); pushes a small image, has the server scan it against an assurance policy, then:

    cached      AdmissionReview v1 requests for a Pod running that image (one container by
                tag, one by digest: both resolved and both verdicts cached) sent open-loop
                at ``--rate`` per second for ``--seconds`` seconds over ``--connections``
                keep-alive HTTPS connections (as kube-apiserver keeps them); latency from
                each request's scheduled start (waiting for a free connection included)
                to its answer: p50 / p90 / p99 / max, and how late the
                sender ran behind its schedule (a client on the same 2 cores)
    scan        ``--scans`` requests, one at a time, each for a new image never scanned,
                with ``unregistered: scan``: the server scans it while the request waits
                (job pickup + pull + scan + verdict read): each latency and the median

Figures are printed, never asserted (docs/bench.md "Admission webhook").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.images import rootfs  # noqa: E402
from tests.fixtures.images.builder import Image  # noqa: E402
from tests.fixtures.images.registry import push_image  # noqa: E402
from tests.helpers.advisories import ADVISORIES  # noqa: E402
from tests.helpers.controlplane import ServerProcess, wait_for  # noqa: E402
from tests.helpers.kube import Webhook, review, workload  # noqa: E402
from tests.helpers.registry import docker_registry  # noqa: E402

POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: strict}\n"
          "spec: {failOn: high}\n")


HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Conn:
    """One keep-alive HTTPS connection speaking just enough HTTP/1.1 (a generic client
    such as httpx costs more CPU per request than the webhook does, and would measure
    itself on these 2 cores)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        return cls(reader, writer)

    async def post(self, request: bytes) -> bytes:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        return head.split(b" ", 2)[1] + b" " + body


async def load(hook: Webhook, body: bytes, rate: float, seconds: float, conns: int
               ) -> tuple[list[float], list[float], int]:
    ctx = ssl.create_default_context(cafile=str(hook.ca_file))
    request = (b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
               b"application/json\r\nContent-Length: " + str(len(body)).encode() +
               b"\r\n\r\n" + body)
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await Conn.open(hook.port, ctx))
    latencies: list[float] = []
    lateness: list[float] = []
    errors = 0

    async def one(at: float) -> None:
        nonlocal errors
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        start = time.perf_counter()
        lateness.append(start - at)
        conn = await pool.get()         # waiting for a free connection counts as latency
        try:
            answer = await conn.post(request)
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - start)
        if not answer.startswith(b"200 ") or b'"allowed":true' not in answer:
            errors += 1

    # warm the caches outside the measurement
    await asyncio.gather(*(one(time.perf_counter()) for _ in range(conns)))
    latencies.clear()
    lateness.clear()
    t0 = time.perf_counter() + 0.2
    await asyncio.gather(*(one(t0 + i / rate) for i in range(int(rate * seconds))))
    while not pool.empty():
        pool.get_nowait().writer.close()
    return latencies, lateness, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--scans", type=int, default=3, help="scans on admission to time")
    ap.add_argument("--connections", type=int, default=16,
                    help="keep-alive HTTPS connections (default 16)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moray-kube-bench-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "registry").mkdir()
        with docker_registry(tmp / "registry") as registry:
            return run(args, tmp, registry)


def run(args: argparse.Namespace, tmp: Path, registry: str) -> int:
    base = f"http://{registry}"
    app = Image([rootfs.dist_info("six", "1.16.0")], config={"User": "1000:1000"})
    digest = push_image(base, "bench/app", "1.0", app)
    server = ServerProcess(tmp / "server", extra_args=("--scan-poll-seconds", "0.3",
                                                      "--scan-workers", "1")).start()
    hooks: list[Webhook] = []
    try:
        admin = server.api()
        server.import_advisories(ADVISORIES)
        token = admin("POST", "/api/v1/tokens", expect=201,
                      json={"name": "kube-enforcer", "role": "admission"})["token"]
        admin("POST", "/api/v1/scan-jobs", expect=200, json={
            "image": f"{registry}/bench/app:1.0", "policy": POLICY, "insecure": True})
        wait_for(lambda: admin("GET", f"/api/v1/images/{digest}/verdicts", expect=200),
                 timeout=120, interval=0.2, what="the image's verdict")
        common = {"registries": {registry: {"insecure": True}}}
        cached = Webhook(tmp, server, token, "cached", common).spawn()
        scan = Webhook(tmp, server, token, "scan", {**common, "unregistered": "scan", "scan": {
            "policy": POLICY, "budget": 25}, "requestTimeout": 28}).spawn()
        hooks += [cached, scan]
        for hook in hooks:
            hook.wait_ready()

        pod = workload("Pod", "web", "shop", [f"{registry}/bench/app:1.0",
                                              f"{registry}/bench/app@{digest}"])
        body = json.dumps(review(pod)).encode()
        assert cached.proc is not None
        cpu0, wall0 = cpu_seconds(cached.proc.pid), time.perf_counter()
        latencies, late, errors = asyncio.run(load(cached, body, args.rate, args.seconds,
                                                   args.connections))
        cpu = cpu_seconds(cached.proc.pid) - cpu0
        wall = time.perf_counter() - wall0
        ms = [x * 1000 for x in latencies]
        print(f"cached verdicts, {len(ms)} requests at {args.rate:g}/s over HTTPS "
              f"({len(body)} B AdmissionReview, 2 containers): p50 {pct(ms, .5):.1f} ms, "
              f"p90 {pct(ms, .9):.1f} ms, p99 {pct(ms, .99):.1f} ms, max {max(ms):.1f} ms; "
              f"errors {errors}; sender behind schedule p99 "
              f"{pct([x * 1000 for x in late], .99):.1f} ms")
        text = cached.http.get("/metrics").text
        hits = [line for line in text.splitlines()
                if line.startswith(("moray_kube_verdict_cache_total",
                                    "moray_kube_registry_lookups_total"))]
        buckets = [(float(line.split('le="')[1].split('"')[0]), float(line.split()[-1]))
                   for line in text.splitlines()
                   if line.startswith("moray_kube_decision_seconds_bucket")
                   and 'le="+Inf"' not in line]
        total = max(n for _, n in buckets) if buckets else 0
        inside = {q: next((le for le, n in buckets if n >= q * total), float("inf"))
                  for q in (0.5, 0.99)}
        print(f"  inside the webhook (parse to answer, no HTTP/TLS): p50 <= "
              f"{inside[0.5] * 1000:g} ms, p99 <= {inside[0.99] * 1000:g} ms "
              f"(histogram bucket bounds)")
        print(f"  webhook process: {cpu / len(ms) * 1000:.2f} ms CPU per request, "
              f"{cpu / wall * 100:.0f} % of a core; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        print("  webhook: " + "; ".join(hits))

        times = []
        for i in range(args.scans):
            img = Image([rootfs.dist_info("six", "1.16.0"), rootfs.dist_info(f"pkg{i}", "1.0")],
                        config={"User": "1000:1000"})
            push_image(base, f"bench/new{i}", "1.0", img)
            pod = workload("Pod", f"new{i}", "shop", [f"{registry}/bench/new{i}:1.0"])
            start = time.perf_counter()
            answer = scan.validate(review(pod))
            times.append(time.perf_counter() - start)
            if not answer["allowed"]:
                print(f"  scan {i}: denied: {answer['status']['message']}")
        if times:
            print(f"scan on admission ({args.scans} new 2-package images, one scan worker "
                  f"thread in the server): " + ", ".join(f"{t:.2f}" for t in times)
                  + f" s; median {statistics.median(times):.2f} s")
    finally:
        for hook in hooks:
            hook.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
