"""What `moray micro` costs its workload: storms unwrapped and wrapped, side by side.

    python bench/micro.py [--rounds N] [--execs N] [--opens N] [--connects N] [--json FILE]
    (needs gcc; runs as whoever runs it, no privileges needed)

Three workloads, the small C programs of bench/c built with gcc into a temporary
directory (before the enforcer starts, so they are not drift):

    exec     fork + execve(/bin/true) + waitpid       (execve notified)
    open     open(/etc/hostname) + close              (openat notified)
    connect  loopback TCP connect + accept + close    (connect notified)

each run bare and under `moray micro` with a policy that makes the call notified and
allows it (exec: deny + drift, files: a deny rule elsewhere, egress: a deny rule
elsewhere: the supervisor's full cost on every call), alternating OFF, ON, OFF, ON ... so
drift and other load fall on both sides. The time is the workload's own (from its first
call to its last), so the enforcer's start-up (a Python interpreter, ~0.2 s) is not in it;
it is printed on its own. Medians, spread and the ratio ON/OFF are printed side by side.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
C = REPO / "bench" / "c"

POLICY = """\
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: bench}
spec:
  scope: {host: true}
  exec: {deny: [/usr/bin/nc], drift: block}
  files: {deny: [{path: /etc/shadow, access: read}]}
  network: {egress: {deny: ["169.254.169.254/32"]}}
  syscalls: {deny: [ptrace]}
"""


def spread(xs: list[float]) -> str:
    return f"{min(xs) * 1e6:.1f}..{max(xs) * 1e6:.1f}"


def build(work: Path) -> dict[str, Path]:
    out = {}
    for name in ("spawn", "opens", "connstorm"):
        exe = work / name
        subprocess.run(["gcc", "-O2", "-I", str(C), "-o", str(exe), str(C / f"{name}.c")],
                       check=True)
        out[name] = exe
    time.sleep(0.2)   # their ctime well before the enforcer's start
    return out


def once(argv: list[str], wrapped: bool, policy: Path, events: Path) -> tuple[float, float]:
    """(seconds per operation as the workload measured it, wall seconds of the whole run)."""
    pre = [sys.executable, "-m", "moray.cli", "micro", "--policy", str(policy),
           "--events", str(events), "--"] if wrapped else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    p = subprocess.run([*pre, *argv], capture_output=True, text=True, env=env, check=True)
    wall = time.monotonic() - t0
    ops, secs = p.stdout.split()[-2:]
    return float(secs) / int(ops), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=2000)
    ap.add_argument("--opens", type=int, default=20000)
    ap.add_argument("--connects", type=int, default=5000)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moray-bench-micro-"))
    try:
        exe = build(work)
        policy = work / "policy.yaml"
        policy.write_text(POLICY)
        events = work / "events.jsonl"
        storms = {"exec": [str(exe["spawn"]), str(a.execs), "/bin/true"],
                  "open": [str(exe["opens"]), "/etc/hostname", str(a.opens)],
                  "connect": [str(exe["connstorm"]), str(a.connects)]}
        res: dict[str, dict[str, list[float]]] = {k: {"off": [], "on": [], "wall_on": [],
                                                      "wall_off": []} for k in storms}
        for _ in range(a.rounds):
            for name, argv in storms.items():
                for side in ("off", "on"):
                    per_op, wall = once(argv, side == "on", policy, events)
                    res[name][side].append(per_op)
                    res[name]["wall_" + side].append(wall)
        print(f"moray micro overhead ({a.rounds} rounds, OFF/ON alternating; "
              f"per-operation time as the workload measured it)")
        print(f"{'storm':8} {'off us/op':>22} {'on us/op':>22} {'ratio':>7}")
        summary = {}
        for name, r in res.items():
            off, on = statistics.median(r["off"]), statistics.median(r["on"])
            print(f"{name:8} {off * 1e6:8.2f} ({spread(r['off']):>12}) "
                  f"{on * 1e6:8.2f} ({spread(r['on']):>12}) {on / off:6.1f}x")
            summary[name] = {"off_us": off * 1e6, "on_us": on * 1e6, "ratio": on / off}
        start = statistics.median(
            w_on - w_off - (statistics.median(res[n]["on"]) - statistics.median(res[n]["off"]))
            * {"exec": a.execs, "open": a.opens, "connect": a.connects}[n]
            for n in res for w_on, w_off in zip(res[n]["wall_on"], res[n]["wall_off"],
                                                 strict=True))
        print(f"enforcer start-up and exit (wall, median): {start * 1e3:.0f} ms")
        summary["startup_ms"] = start * 1e3  # type: ignore[assignment]
        if a.json:
            a.json.write_text(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
