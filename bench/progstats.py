#!/usr/bin/env python3
"""Where the kernel-side cost of each workload goes, per BPF program.

Starts one agent the way bench/run.py does (same workloads, same watch directory, agent
arguments passed through), turns on the kernel's BPF run-time statistics
(`kernel.bpf_stats_enabled`, restored afterwards) and prints, per workload, every moray
program that ran: runs per operation, ns per run, and us of program time per operation.
The sum is moray's in-kernel work per operation; the hooks' own entry cost (the floor,
bench/floor.py) and the agent's user-space CPU are not in it.

    sudo .venv/bin/python bench/progstats.py                  # every workload, 20,000 ops
    sudo .venv/bin/python bench/progstats.py --only spawn,connect --ops 5000
    sudo .venv/bin/python bench/progstats.py --agent-arg=--policy-dir=/etc/moray/policies

Statistics cost a little themselves (two clock reads per program run): compare programs
with each other here, and overheads with bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DEFAULT_AGENT, Agent, BenchError, Workloads, run_workload

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
WORKLOADS = ("spawn", "open-unwatched", "open-relative", "open-watched", "connect")


def snapshot(bpftool: str) -> dict[int, tuple[str, str, int, int]]:
    """Program id -> (name, type, run count, run time ns) of moray's programs."""
    r = subprocess.run([bpftool, "prog", "show", "-j"], capture_output=True, text=True,
                       check=True)
    return {p["id"]: (p.get("name", ""), p.get("type", ""), p.get("run_cnt", 0),
                      p.get("run_time_ns", 0))
            for p in json.loads(r.stdout or "[]") if str(p.get("name", "")).startswith("mr_")}


def commands(loads: Workloads, work: Path, ops: int) -> dict[str, tuple[list[str], str | None]]:
    unwatched, watched = work / "unwatched", work / "watched"
    return {
        "spawn": (loads.cmd("spawn", ops, "/bin/true"), None),
        "open-unwatched": (loads.cmd("opens", unwatched / "file", ops * 10), None),
        "open-relative": (loads.cmd("opens", "file", ops * 10), str(unwatched)),
        "open-watched": (loads.cmd("opens", watched / "file", ops), None),
        "connect": (loads.cmd("connstorm", ops), None),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default=str(DEFAULT_AGENT))
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="extra argument for `moray-agent run` (repeatable)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--ops", type=int, default=20_000,
                    help="operations per workload (opens of an unwatched file: ten times)")
    ap.add_argument("--top", type=int, default=12, help="programs shown per workload")
    args = ap.parse_args()
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        print("bpftool not found (make install puts it there)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="moray-progstats-") as tmp:
        work = Path(tmp)
        for d in ("unwatched", "watched", "no-policies"):
            (work / d).mkdir()
        for d in ("unwatched", "watched"):
            (work / d / "file").write_text("moray bench\n")
        loads = Workloads(work)
        loads.build()
        before = snapshot(bpftool)
        if before:
            print(f"warning: {len(before)} moray programs already loaded (another agent or "
                  "stale pins: `moray-agent unload`); their runs are counted too")
        agent = Agent(args.agent, work, "devnull", str(work / "watched") + "/",
                      [f"--policy-dir={work / 'no-policies'}", *args.agent_arg])
        old = STATS.read_text().strip()
        try:
            agent.start()
            STATS.write_text("1\n")
            cmds = commands(loads, work, args.ops)
            for name in [w for w in args.only.split(",") if w]:
                cmd, cwd = cmds[name]
                a = snapshot(bpftool)
                ops, secs = run_workload(cmd, cwd)
                b = snapshot(bpftool)
                rows = []
                for pid, (pname, ptype, cnt, ns) in b.items():
                    _n, _t, cnt0, ns0 = a.get(pid, (pname, ptype, 0, 0))
                    if cnt > cnt0:
                        rows.append((ns - ns0, cnt - cnt0, pname, ptype))
                rows.sort(reverse=True)
                total = sum(r[0] for r in rows) / ops / 1000
                print(f"\n{name}: {ops:,} ops in {secs:.2f} s ({secs / ops * 1e6:.2f} us/op); "
                      f"moray programs {total:.3f} us/op ({total / (secs / ops * 1e6):.1%})")
                print(f"  {'program':24} {'type':17} {'runs/op':>8} {'ns/run':>7} {'us/op':>7}")
                for ns, cnt, pname, ptype in rows[:args.top]:
                    print(f"  {pname:24} {ptype:17} {cnt / ops:8.2f} {ns / cnt:7.0f} "
                          f"{ns / ops / 1000:7.3f}")
        except BenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        finally:
            STATS.write_text(old + "\n")
            agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
