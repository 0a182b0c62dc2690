"""Runtime-policy benchmark: what a large policy costs the workload, and how long it takes
to apply and to replace one.

    python bench/policy_bench.py [--rounds N] [--execs N] [--connects N] [--json FILE]
    (as root; needs gcc, the built BPF objects)

1. Overhead.  One agent (the real `moray-agent run`, private pins, policy directory and
   status file) runs throughout.  Two workloads, a small C program built with gcc into a
   temporary directory:

       exec     fork + execve(/bin/true) + waitpid
       connect  loopback TCP connect + accept + close (RST, so no TIME_WAIT piles up)

   alternate between NO POLICY and a host-scoped policy of 1,000 exec deny rules and 1,000
   CIDR deny rules (none matching the workload, so every exec / connect is looked up and
   allowed: the kernel's full cost), OFF, ON, OFF, ON ... so drift and other load on the
   machine fall on both sides.  Medians, spread (min..max) and the ratio ON/OFF are
   printed side by side.

2. Apply / replace.  In this process, with the real BPF object loaded but not attached:
   a 10,000-rule policy (5,000 exec paths + 5,000 CIDRs) parsed and validated, compiled,
   and published to the real maps (staging, the one publishing write, grace, cleanup);
   then replaced by a changed version (a new slot: both versions complete at the flip),
   then removed.  End-to-end through the running agent is slower by its directory poll
   (0.5 s).

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.agent_proc import AgentProc  # noqa: E402

STORM_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int n = argc > 2 ? atoi(argv[2]) : 1000, st;
    double t0;
    if (argc > 1 && !strcmp(argv[1], "exec")) {
        t0 = now();
        for (int i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
            if (p < 0 || waitpid(p, &st, 0) < 0 || st != 0) { perror("exec"); return 1; }
        }
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET};
        socklen_t al = sizeof(a);
        struct linger lg = {1, 0};
        int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 4096) ||
            getsockname(ls, (struct sockaddr *)&a, &al)) { perror("listen"); return 1; }
        pid_t srv = fork();
        if (srv == 0) {
            for (;;) { int c = accept(ls, 0, 0); if (c >= 0) close(c); }
        }
        t0 = now();
        for (int i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(s, (struct sockaddr *)&a, sizeof(a))) { perror("connect"); return 1; }
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(s);
        }
        double t = now() - t0;
        kill(srv, SIGKILL);
        waitpid(srv, &st, 0);
        printf("%.6f\n", t);
        return 0;
    }
    printf("%.6f\n", now() - t0);
    return 0;
}
"""


def build_storm(work: Path) -> Path:
    src = work / "storm.c"
    src.write_text(STORM_C)
    exe = work / "storm"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def policy_text(name: str, execs: int, cidrs: int, *, host: bool = True,
                variant: int = 0, sentinel: Path | None = None) -> str:
    """A policy of *execs* exec deny paths and *cidrs* CIDR deny rules, none of which
    matches /bin/true or 127.0.0.1.  With *sentinel*, the first of each is a rule the
    benchmark checks (that binary killed, 127.0.0.2:9 refused with EPERM), so ON is
    known to be enforced."""
    paths = [f"/opt/moray-bench/v{variant}/deny-{i}" for i in range(execs)]
    nets = [f"10.{(i >> 8) & 255}.{i & 255}.0/24" for i in range(cidrs)]
    if sentinel is not None:
        paths[0], nets[0] = str(sentinel), "127.0.0.2/32:9"
    scope = "{host: true}" if host else "{containers: {names: ['moray-bench-none']}}"
    return (f"apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  scope: {scope}\n  mode: enforce\n"
            f"  exec: {{deny: {json.dumps(paths)}}}\n"
            f"  network: {{egress: {{deny: {json.dumps(nets)}}}}}\n")


def run_storm(exe: Path, kind: str, n: int) -> float:
    """Operations per second of one storm."""
    out = subprocess.run([str(exe), kind, str(n)], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    return n / float(out.strip())


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def enforced(sentinel: Path) -> bool:
    """The policy's sentinel rules act: its binary is killed, its address refused."""
    killed = subprocess.run([str(sentinel)], check=False).returncode == -9
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.2", 9))
        except PermissionError:
            return killed
        except OSError:
            return False  # refused by the (absent) server: not denied
    return False


def overhead(exe: Path, rounds: int, sizes: dict[str, int]) -> dict[str, Any]:
    agent = AgentProc()
    sentinel = exe.parent / "sentinel-true"
    shutil.copy2("/bin/true", sentinel)
    text = policy_text("bench-2k", 1000, 1000, sentinel=sentinel)
    rates: dict[str, dict[str, list[float]]] = {k: {"off": [], "on": []} for k in sizes}
    try:
        agent.start()
        for kind, n in sizes.items():
            run_storm(exe, kind, max(n // 10, 100))  # warm-up
        for r in range(rounds):
            for state in ("off", "on"):
                if state == "on":
                    agent.apply("bench-2k", text, timeout=60)
                elif r > 0:
                    agent.delete("bench-2k", timeout=60)
                if enforced(sentinel) != (state == "on"):
                    raise RuntimeError(f"round {r + 1}: policy {state} not in effect")
                for kind, n in sizes.items():
                    rates[kind][state].append(run_storm(exe, kind, n))
            print(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {rates[k]['off'][-1]:,.0f} / {rates[k]['on'][-1]:,.0f} per s"
                for k in sizes), flush=True)
        status = json.loads(agent.status.read_text())
    finally:
        agent.cleanup()
    out: dict[str, Any] = {"policy_rules": {"exec": 1000, "cidr": 1000},
                           "tiers": status.get("tiers")}
    for kind, n in sizes.items():
        off, on = summary(rates[kind]["off"]), summary(rates[kind]["on"])
        out[kind] = {"n": n, "off": off, "on": on,
                     "overhead_pct": 100 * (off["median"] / on["median"] - 1)}
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t0


def apply_replace(rules: int) -> dict[str, Any]:
    from moray.agent.bpf.loader import BpfObject, object_path
    from moray.agent.policy.apply import MAP_NAMES, Applier
    from moray.agent.policy.compile import compile_policies
    from moray.agent.policy.programs import programs_to_skip
    from moray.api.policy.load import load_text

    obj = BpfObject.open(object_path("moray.bpf.o"))
    try:
        obj.set_max_entries("mr_events", 1 << 20)
        obj.disable(programs_to_skip(((n, sec) for n, sec, _ in obj.programs()), False))
        try:
            from moray.agent.detect.programs import programs_to_skip as detect_skip

            obj.disable(detect_skip((n, sec) for n, sec, _ in obj.programs()))
        except ImportError:
            pass  # a tree without detection programs
        obj.load()  # loaded, not attached: nothing on this machine is affected
        applier = Applier({n: obj.map(n) for n in MAP_NAMES})
        out: dict[str, Any] = {"rules": rules, "grace_s": applier.grace}
        half = rules // 2
        for step, slot, variant in (("apply", 0, 0), ("replace", 1, 1)):
            text = policy_text("bench-10k", half, half, host=False, variant=variant)
            pols, t_load = timed(lambda t=text: load_text(t, "bench-10k.yaml"))
            compiled, t_compile = timed(lambda p=pols, s=slot: compile_policies([(s, p[0])]))
            stats, t_publish = timed(lambda c=compiled: applier.publish(c, {}))
            out[step] = {"load_validate_s": t_load, "compile_s": t_compile,
                         "publish_s": t_publish, "rows_staged": stats.staged,
                         "rows_deleted": stats.deleted,
                         "total_s": t_load + t_compile + t_publish}
        empty = compile_policies([])
        stats, t_remove = timed(lambda: applier.publish(empty, {}))
        out["remove"] = {"publish_s": t_remove, "rows_deleted": stats.deleted}
        return out
    finally:
        obj.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=5000)
    ap.add_argument("--connects", type=int, default=10000)
    ap.add_argument("--rules", type=int, default=10000)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (BPF)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="moray-policy-bench-") as tmp:
        exe = build_storm(Path(tmp))
        print(f"overhead: {args.rounds} rounds, OFF = agent without policy, "
              "ON = 1,000 exec + 1,000 CIDR rules in scope", flush=True)
        ov = overhead(exe, args.rounds, {"exec": args.execs, "connect": args.connects})
    print(f"\n{'storm':<9}{'n':>7}  {'no policy /s (min..max)':>28}  "
          f"{'2,000 rules /s (min..max)':>28}  overhead")
    for kind in ("exec", "connect"):
        r = ov[kind]
        fmt = "{median:>9,.0f} ({min:,.0f}..{max:,.0f})"
        print(f"{kind:<9}{r['n']:>7}  {fmt.format(**r['off']):>28}  "
              f"{fmt.format(**r['on']):>28}  {r['overhead_pct']:+.1f} %")
    print(f"\napply / replace a {args.rules:,}-rule policy (real maps, in-process):",
          flush=True)
    ar = apply_replace(args.rules)
    for step in ("apply", "replace"):
        s = ar[step]
        print(f"  {step:<8} load+validate {s['load_validate_s']:.3f} s, compile "
              f"{s['compile_s']:.3f} s, publish {s['publish_s']:.3f} s "
              f"({s['rows_staged']:,} rows staged, {s['rows_deleted']:,} deleted) = "
              f"{s['total_s']:.3f} s")
    print(f"  remove   publish {ar['remove']['publish_s']:.3f} s "
          f"({ar['remove']['rows_deleted']:,} rows deleted); grace {ar['grace_s']} s included")
    if args.json:
        Path(args.json).write_text(json.dumps({"overhead": ov, "apply_replace": ar},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
