"""NanoEnforcer overhead: a Python function per invocation with and without the audit
hooks, side by side in one run (docs/bench.md "NanoEnforcer").

    python bench/nano.py [--invocations N] [--quick] [--json FILE]

Two functions run at once under the real Lambda runtime interface emulator
(aws-lambda-rie + awslambdaric, as the integration tests): OFF (plain) and ON (started
through the layer's exec wrapper, policy enforced: writes only in /tmp, one listed
file, egress allow-list). Invocations alternate OFF, ON, OFF, ON... so drift and other
load on the machine fall on both. Per workload, two figures:

- work: the handler's own time for its work (perf_counter_ns inside the function), where
  every audited operation pays the hook: the enforcer's cost without the emulator's noise;
- invoke: the client's round trip of one invocation over HTTP on 127.0.0.1 (what a
  caller waits for, emulator included).

Workloads: noop (return at once), files (20 writes + 20 reads in /tmp), net (10 loopback
TCP connects by address and 1 by name), mixed (a 10 KB JSON event decoded and encoded, 4
file operations, 1 connect: a typical handler). Also init: ``python -c pass`` with and
without the wrapper (the sitecustomize and the policy load at a cold start).

Timings are printed, never asserted; the exit status is 0 unless a function failed.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moray.nano import layer  # noqa: E402
from moray.nano.policy import compile_text  # noqa: E402
from tests.helpers.lambda_rie import emulator, find_rie, ric_path  # noqa: E402

HANDLER = r'''
import json, os, socket, time

BLOB = json.dumps({"records": [{"id": i, "body": "x" * 80} for i in range(100)]})

def handler(event, context):
    do, port = event["do"], event["port"]
    t0 = time.perf_counter_ns()
    if do == "files":
        for i in range(20):
            with open(f"/tmp/nano-bench-{i}", "w") as f:
                f.write("x")
        for i in range(20):
            with open(f"/tmp/nano-bench-{i}") as f:
                f.read()
    elif do == "net":
        for _ in range(10):
            socket.create_connection(("127.0.0.1", port)).close()
        socket.create_connection(("localhost", port)).close()
    elif do == "mixed":
        data = json.loads(BLOB)
        out = json.dumps(data)
        with open("/tmp/nano-bench-m", "w") as f:
            f.write(out)
        with open("/tmp/nano-bench-m") as f:
            f.read()
        os.rename("/tmp/nano-bench-m", "/tmp/nano-bench-m2")
        os.remove("/tmp/nano-bench-m2")
        socket.create_connection(("127.0.0.1", port)).close()
    return {"ns": time.perf_counter_ns() - t0}
'''

POLICY = """\
apiVersion: moray/v1
kind: FunctionPolicy
metadata: {{name: bench}}
spec:
  mode: enforce
  files:
    writable: ["/tmp/*"]
    deny: [{{path: /etc/shadow, access: read}}]
  network:
    egress:
      allow: ["127.0.0.1/32:{port}", {{host: localhost, ports: {port}}}]
      deny: [169.254.169.254/32]
"""

WORKLOADS = ("noop", "files", "net", "mixed")


class _Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1)


class _Server(socketserver.ThreadingTCPServer):
    request_queue_size = 128  # the default 5 overflows on a connect burst: SYN retries
    daemon_threads = True


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.9)] if xs else float("nan")


def init_cost(opt: Path, rounds: int) -> dict[str, float]:
    """``python -c pass`` plain vs through the wrapper, alternated (ms, median)."""
    wrapper = str(opt / layer.WRAPPER)
    off, on = [], []
    for _ in range(rounds):
        for side, cmd in (("off", [sys.executable, "-c", "pass"]),
                          ("on", [wrapper, sys.executable, "-c", "pass"])):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env={"PATH": os.environ["PATH"]})
            (off if side == "off" else on).append((time.perf_counter() - t0) * 1000)
    return {"off_ms": _median(off), "on_ms": _median(on)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--invocations", type=int, default=300, help="per workload and side")
    ap.add_argument("--quick", action="store_true", help="60 invocations per side")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    n = 60 if args.quick else args.invocations
    if find_rie() is None or ric_path() is None:
        sys.stderr.write("bench/nano.py: aws-lambda-rie or awslambdaric missing "
                         "(make install)\n")
        return 2
    srv = _Server(("127.0.0.1", 0), _Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    results: dict[str, Any] = {"invocations": n}
    with tempfile.TemporaryDirectory(prefix="moray-nano-bench-") as d:
        base = Path(d)
        task = base / "task"
        task.mkdir()
        (task / "fn.py").write_text(HANDLER)
        layer.build(base / "layer.zip", compile_text(POLICY.format(port=port)))
        layer.unpack(base / "layer.zip", base / "opt")
        wrapper = [str(base / "opt" / layer.WRAPPER)]
        with emulator(task, "fn.handler", base / "off.log") as off, \
                emulator(task, "fn.handler", base / "on.log", wrapper=wrapper) as on:
            for w in WORKLOADS:  # warm both (init, first imports)
                off.invoke({"do": w, "port": port})
                on.invoke({"do": w, "port": port})
            for w in WORKLOADS:
                fig: dict[str, list[float]] = {"off_work": [], "on_work": [],
                                               "off_invoke": [], "on_invoke": []}
                for _ in range(n):
                    for side, fn in (("off", off), ("on", on)):
                        t0 = time.perf_counter()
                        got = fn.invoke({"do": w, "port": port})
                        fig[f"{side}_invoke"].append((time.perf_counter() - t0) * 1e6)
                        if "ns" not in got:
                            sys.stderr.write(f"{side} {w}: the function failed: {got}\n")
                            return 1
                        fig[f"{side}_work"].append(got["ns"] / 1000)
                results[w] = {k: {"median_us": _median(v), "p90_us": _p90(v)}
                              for k, v in fig.items()}
            results["events_on"] = sum(1 for line in on.lines()
                                       if line.get("enforcer") == "nano")
        results["init"] = init_cost(base / "opt", max(5, n // 20))
    srv.shutdown()
    srv.server_close()

    out = sys.stdout
    out.write(f"NanoEnforcer overhead, {n} invocations per workload and side "
              f"(alternated), medians (p90)\n\n")
    out.write(f"{'workload':8} {'work OFF us':>16} {'work ON us':>16} {'ratio':>6}   "
              f"{'invoke OFF us':>16} {'invoke ON us':>16} {'ratio':>6}\n")
    for w in WORKLOADS:
        r = results[w]

        def cell(k: str, r: dict[str, Any] = r) -> str:
            return f"{r[k]['median_us']:.1f} ({r[k]['p90_us']:.0f})"

        wr = r["on_work"]["median_us"] / r["off_work"]["median_us"] \
            if r["off_work"]["median_us"] > 0 else float("nan")
        ir = r["on_invoke"]["median_us"] / r["off_invoke"]["median_us"]
        out.write(f"{w:8} {cell('off_work'):>16} {cell('on_work'):>16} {wr:6.2f}   "
                  f"{cell('off_invoke'):>16} {cell('on_invoke'):>16} {ir:6.2f}\n")
        r["work_ratio"], r["invoke_ratio"] = wr, ir
    i = results["init"]
    out.write(f"\ninit (python -c pass): OFF {i['off_ms']:.1f} ms, ON {i['on_ms']:.1f} ms, "
              f"+{i['on_ms'] - i['off_ms']:.1f} ms\n")
    out.write(f"events written by the ON function: {results['events_on']} (expected 0: "
              f"all work allowed)\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
