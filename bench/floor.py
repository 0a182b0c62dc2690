"""The floor under the unwatched-open overhead: empty BPF programs on each hook an open
can be seen from on this kernel (no kprobes, fentry or BPF LSM here: docs/kernels.md).

    python bench/floor.py [--opens 200000] [--rounds 10]   (as root)

Runs bench/c/opens.c (open + close of one file, pinned to one CPU) with nothing attached,
with empty programs on syscalls:sys_enter_openat + sys_exit_openat (perf's per-syscall
events, which the agent's file programs use), with empty tp_btf programs on
raw_syscalls:sys_enter + sys_exit (every syscall of the host), and with both, in
interleaved rounds. Prints per condition the median and the minimum (the run least
disturbed by other load) and the overhead over nothing attached. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from moray.agent.bpf.loader import BpfObject  # noqa: E402

CONDITIONS: dict[str, tuple[str, ...]] = {
    "nothing attached": (),
    "empty syscall tracepoints (openat enter+exit)": ("floor_tp_enter", "floor_tp_exit"),
    "empty raw sys_enter+sys_exit (tp_btf)": ("floor_raw_enter", "floor_raw_exit"),
    "both": ("floor_tp_enter", "floor_tp_exit", "floor_raw_enter", "floor_raw_exit"),
}


def build(tmp: Path) -> tuple[Path, Path]:
    opens = tmp / "opens"
    subprocess.run(["gcc", "-O2", "-o", str(opens), str(HERE / "c" / "opens.c")], check=True)
    obj = tmp / "floor.bpf.o"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
                    "-I", str(REPO / "bpf" / "include"), "-c", str(HERE / "bpf" / "floor.bpf.c"),
                    "-o", str(obj)], check=True)
    return opens, obj


def one_run(opens: Path, target: Path, n: int) -> float:
    cpu = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    out = subprocess.run([*cpu, str(opens), str(target), str(n)], capture_output=True,
                         text=True, check=True).stdout
    return float(out.split()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opens", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moray-floor-", dir="/var/tmp") as d:
        tmp = Path(d)
        opens, obj_path = build(tmp)
        target = tmp / "file"
        target.write_text("floor\n")
        times: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        one_run(opens, target, args.opens)  # warm-up
        for _ in range(args.rounds):
            for cond, progs in CONDITIONS.items():
                obj = None
                if progs:
                    obj = BpfObject.open(str(obj_path))
                    obj.disable([n for n, _s, _p in obj.programs() if n not in progs])
                    obj.load()
                    obj.attach_all(None)
                try:
                    times[cond].append(one_run(opens, target, args.opens))
                finally:
                    if obj is not None:
                        obj.close()
    base_med = statistics.median(times["nothing attached"])
    base_min = min(times["nothing attached"])
    print(f"{args.opens:,} open+close per run, {args.rounds} interleaved rounds")
    print(f"{'condition':48s} {'median':>9s} {'overhead':>9s} {'min':>9s} {'overhead':>9s}")
    for cond, ts in times.items():
        med, mn = statistics.median(ts), min(ts)
        print(f"{cond:48s} {med * 1e6 / args.opens:7.3f}us {100 * (med / base_med - 1):+8.1f}% "
              f"{mn * 1e6 / args.opens:7.3f}us {100 * (mn / base_min - 1):+8.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
