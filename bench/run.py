"""moray agent benchmark: the cost the agent adds to a workload, and what it can ingest.

    python bench/run.py [--quick] [--only NAME[,NAME]] [--conditions on,no-policy,after-stop]
                        [--json FILE]   (as root)

Each A/B benchmark runs a small C program (bench/c/, built with gcc into a temporary
directory; Python stand-ins in bench/pyload.py if gcc is missing) with the agent OFF and
ON, alternated (OFF, ON, OFF, ON, ...) so that drift and other load on the machine fall on
both sides; medians and the spread (min..max) are reported. Every ON run starts a fresh
agent and stops it afterwards, so no backlog from one run leaks into the next.

    spawn          fork + execve(/bin/true) + waitpid, 20,000 times
    open-unwatched open/close of a file outside the watched set (absolute path), 1,000,000x
    open-relative  the same file opened by a relative path (the kernel resolves these at exit)
    open-watched   open/close of a file under a watched prefix (--watch DIR), 1,000,000x
    connect        loopback TCP connect + accept + close, 20,000 times
    change         chmod of a file outside the watched set, 1,000,000x: the ctime hook of
                   file rules by identity runs on each (with a file rule live, give the
                   agent a policy: --agent-arg=--policy-dir=DIR)
    ingest         the event rate the agent's user space sustains with zero drops: a paced
                   driver of watched opens, first as fast as it can (saturation), then a
                   search for the highest rate at which nothing is dropped and the agent
                   keeps up (every event emitted within 1 s of the driver stopping); the
                   agent pinned to CPU 0 (taskset), the driver to CPU 1
    ingest-distinct  the same over 8,192 distinct watched files opened in turn (beyond the
                   agent's 4,096-entry per-path caches)
    startup        time from the agent's exec to /readyz 200, median of 5 (3 quick), with
                   each start-up step's duration and RSS from the agent's log (info level)
    floor          bench/floor.py in the same run: empty BPF programs on the hooks an open
                   is seen from; each open overhead is then printed as floor + moray's share

Conditions (--conditions, each A/B benchmark): "on" (a default agent), "no-policy" (the
agent with an empty --policy-dir) and "after-stop" (an agent that pinned its objects under
a private --pin-root, started and stopped (SIGTERM) before the workload runs: what stays
attached after `systemctl stop`; the pins are removed afterwards).

The agent's peak RSS (VmHWM, plus VmRSS sampled every 0.25 s) is taken from every agent
the benchmark starts. Timings are printed, never asserted: the exit status is 0 unless a
workload or the agent failed to run. See docs/bench.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_AGENT = REPO / ".venv" / "bin" / "moray-agent"

# Targets from issue 18 ("Benchmark"); overhead in percent, rates in events/s, RSS in MB,
# ready in seconds. A watched-file storm at most 2x (+100 %) with zero lost information.
TARGETS = {"spawn": 3.0, "connect": 10.0, "open-watched": 100.0, "ingest": 250_000.0,
           "rss": 60.0, "ready": 3.0}
# overhead targets as points over the floor (bench/floor.py, same run)
FLOOR_TARGETS = {"open-unwatched": 3.0, "open-relative": 3.0}
# the floor condition (bench/floor.py) under each open benchmark: the agent's file programs
# are syscall tracepoints on openat's enter and exit
FLOOR_OF = {"open-unwatched": "empty syscall tracepoints (openat enter+exit)",
            "open-relative": "empty syscall tracepoints (openat enter+exit)",
            "open-watched": "empty syscall tracepoints (openat enter+exit)"}
# the workload's own syscalls per operation, for agent CPU per 1,000 workload syscalls
SYSCALLS_PER_OP = {"spawn": 3,           # clone, execve, wait4 (not /bin/true's own)
                   "open-unwatched": 2, "open-relative": 2, "open-watched": 2,  # open+close
                   "connect": 6,         # socket, connect, accept, setsockopt, close x2
                   "change": 1}          # chmod
CONDITIONS = ("on", "no-policy", "after-stop")
DISTINCT_FILES = 8192   # beyond the agent's 4,096-entry per-path caches (schema.py, detect)


class BenchError(Exception):
    """A workload or the agent failed to run: the benchmark cannot produce its figures."""


@dataclass(frozen=True)
class Sizes:
    rounds: int
    spawn: int
    opens: int
    opens_watched: int
    connect: int
    sat_seconds: float      # ingest: saturation run
    trial_seconds: float    # ingest: each paced trial
    trials: int             # ingest: paced trials in the zero-drop search
    startups: int           # startup: agent starts
    floor_opens: int        # floor: open+close per run
    floor_rounds: int       # floor: interleaved rounds


AGG_SETTLE = 1.5  # s: the kernel's aggregation window and one sweep (agent/events/aggregate.py)

FULL = Sizes(rounds=3, spawn=20_000, opens=1_000_000, opens_watched=1_000_000, connect=20_000,
             sat_seconds=10, trial_seconds=8, trials=6, startups=5, floor_opens=500_000,
             floor_rounds=5)
QUICK = Sizes(rounds=2, spawn=1_000, opens=200_000, opens_watched=100_000, connect=5_000,
              sat_seconds=3, trial_seconds=2, trials=2, startups=3, floor_opens=100_000,
              floor_rounds=2)

AB_BENCHES = ("spawn", "open-unwatched", "open-relative", "open-watched", "connect", "change")
ALL_BENCHES = ("floor", "startup", *AB_BENCHES, "ingest", "ingest-distinct")


# --- workloads ----------------------------------------------------------------------------

@dataclass
class Workloads:
    """The workload programs: C binaries when gcc is available, else bench/pyload.py."""

    bindir: Path
    kind: str = "c"
    compiler: str = ""

    def build(self) -> None:
        gcc = shutil.which("gcc")
        if gcc is None:
            self.kind = "python"
            return
        for name in ("spawn", "opens", "connstorm", "changes"):
            r = subprocess.run([gcc, "-O2", "-Wall", "-o", str(self.bindir / name),
                                str(HERE / "c" / f"{name}.c")],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                print(f"gcc failed on bench/c/{name}.c, using the Python workloads:\n"
                      f"{r.stderr}", file=sys.stderr)
                self.kind = "python"
                return
        self.compiler = subprocess.run([gcc, "--version"], capture_output=True, text=True,
                                       check=False).stdout.splitlines()[0]

    def cmd(self, name: str, *args: object) -> list[str]:
        if self.kind == "c":
            return [str(self.bindir / name), *map(str, args)]
        return [sys.executable, str(HERE / "pyload.py"), name, *map(str, args)]


def run_workload(cmd: list[str], cwd: str | None = None) -> tuple[int, float]:
    """Run one workload program; returns (operations done, elapsed seconds it measured)."""
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    try:
        ops, elapsed = r.stdout.split()
        return int(ops), float(elapsed)
    except ValueError as err:
        raise BenchError(f"{' '.join(cmd)}: unexpected output {r.stdout!r}") from err


# --- the agent ----------------------------------------------------------------------------

STEP_RE = re.compile(r"start-up step (?P<step>\w+): (?P<ms>\d+) ms"
                     r"(?:, RSS (?P<rss>[\d.]+) MB)?")
DONE_RE = re.compile(r"start-up done: (?P<ms>\d+) ms")
METRIC_RE = re.compile(r'^(moray_[a-z_]+)(?:\{(\w+)="([^"]*)"\})?\s+(\S+)$')


@dataclass
class Metrics:
    """One scrape of the agent's /metrics, summed over labels where a total is wanted."""

    events: dict[str, float] = field(default_factory=dict)    # moray_events_total{type}
    # moray_events_aggregated_total{type}: events counted into summaries by the kernel
    aggregated: dict[str, float] = field(default_factory=dict)
    kernel_records: float = 0.0                               # sum over CPUs
    ringbuf_drops: float = 0.0                                # sum over CPUs
    queue_drops: float = 0.0
    queue_depth: float = 0.0
    decode_errors: float = 0.0
    tree_size: float = 0.0

    @property
    def emitted(self) -> float:
        return sum(self.events.values())

    @property
    def drops(self) -> float:
        return self.ringbuf_drops + self.queue_drops

    @classmethod
    def parse(cls, text: str) -> Metrics:
        m = cls()
        for line in text.splitlines():
            hit = METRIC_RE.match(line)
            if not hit:
                continue
            name, _, label, value = hit.groups()
            v = float(value)
            if name == "moray_events_total":
                m.events[label] = v
            elif name == "moray_events_aggregated_total":
                m.aggregated[label] = v
            elif name == "moray_kernel_records_total":
                m.kernel_records += v
            elif name == "moray_ringbuf_drops_total":
                m.ringbuf_drops += v
            elif name == "moray_queue_drops_total":
                m.queue_drops = v
            elif name == "moray_queue_depth":
                m.queue_depth = v
            elif name == "moray_decode_errors_total":
                m.decode_errors = v
            elif name == "moray_process_tree_size":
                m.tree_size = v
        return m

    def delta(self, before: Metrics) -> dict[str, Any]:
        return {
            "events": {t: int(n - before.events.get(t, 0)) for t, n in self.events.items()
                       if n - before.events.get(t, 0)},
            "emitted": int(self.emitted - before.emitted),
            "aggregated": {t: int(n - before.aggregated.get(t, 0))
                           for t, n in self.aggregated.items()
                           if n - before.aggregated.get(t, 0)},
            "kernel_records": int(self.kernel_records - before.kernel_records),
            "ringbuf_drops": int(self.ringbuf_drops - before.ringbuf_drops),
            "queue_drops": int(self.queue_drops - before.queue_drops),
            "decode_errors": int(self.decode_errors - before.decode_errors),
        }


def other_moray_progs() -> int | None:
    """BPF programs named mr_* loaded by someone else (other agents, tests); None = unknown.

    Their hooks run in the OFF runs too, so OFF is "without this agent", not "without BPF".
    """
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return None
    r = subprocess.run([bpftool, "-j", "prog", "show"], capture_output=True, text=True, check=False)
    try:
        progs = json.loads(r.stdout or "[]")
    except ValueError:
        return None
    return sum(1 for p in progs if str(p.get("name", "")).startswith("mr_"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def isolation_args(exe: str) -> list[str]:
    """Flags that keep the benchmark's agents to themselves, where this agent has them.

    By default an agent pins its maps under /sys/fs/bpf/moray and adopts what an earlier
    agent pinned there (ring buffer, counters, enforcement links); another agent on the
    machine would then share our counters, and pinned links outlive our runs into the OFF
    runs. --no-pin avoids both. (Policies: the default --policy-dir, /etc/moray/policies,
    is left as it is; the report says whether it exists.)
    """
    r = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, check=False)
    return ["--no-pin"] if "--no-pin" in r.stdout else []


def moray_programs_loaded() -> int:
    """How many BPF programs named like moray's (mr_*) are loaded now (0 if bpftool is
    missing): a stale pinned agent skews every condition of the run."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return 0
    r = subprocess.run([bpftool, "prog", "show", "-j"], capture_output=True, text=True,
                       check=False)
    try:
        progs = json.loads(r.stdout or "[]")
    except json.JSONDecodeError:
        return 0
    return sum(1 for p in progs if str(p.get("name", "")).startswith("mr_"))


class Agent:
    """One moray-agent process: started, scraped, sampled for RSS, stopped."""

    def __init__(self, exe: str, workdir: Path, output: str, watch: str,
                 extra: list[str]) -> None:
        self.exe = exe
        self.workdir = workdir
        self.output_mode = output
        self.watch = watch
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.out_path = ""
        self.rss_peak_kb = 0
        self.hwm_kb = 0
        self.output_bytes = 0
        self.exit_status: int | None = None
        self.stderr_tail = ""
        self.ready_s = 0.0
        self.err_path = workdir / "agent-0.log"
        self._sampler: threading.Thread | None = None
        self._stop_sampling = threading.Event()
        self._n = 0

    def start(self, timeout: float = 120.0, extra: list[str] | None = None,
              cpu: int | None = None, log_level: str = "warning") -> None:
        """Start an agent and wait until it is ready (/readyz 200: programs attached,
        policies applied, pipeline running); `ready_s` is how long that took. `extra`
        replaces the extra arguments; `cpu` pins the agent (all its threads) to one CPU."""
        self._n += 1
        self.port = free_port()
        self.out_path = ("/dev/null" if self.output_mode == "devnull"
                         else str(self.workdir / f"events-{self._n}.jsonl"))
        self.err_path = self.workdir / f"agent-{self._n}.log"
        pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
        cmd = [*pin, self.exe, "--log-level", log_level, "run", "--output", self.out_path,
               "--metrics-port", str(self.port), "--watch", self.watch,
               *(self.extra if extra is None else extra)]
        t0 = time.monotonic()
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"the agent exited {self.proc.returncode} at start-up:\n"
                                 f"{self._tail()}")
            if self.ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the agent was not ready in {timeout:.0f}s:"
                                 f"\n{self._tail()}") from None
            time.sleep(0.02)
        self.ready_s = time.monotonic() - t0
        self.rss_peak_kb = 0
        self._stop_sampling.clear()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()
        time.sleep(0.3)  # let the start-up burst (the /proc scan's own events) settle

    def _sample_rss(self) -> None:
        assert self.proc is not None
        pid = self.proc.pid
        while not self._stop_sampling.wait(0.25):
            self.rss_peak_kb = max(self.rss_peak_kb, proc_status_kb(pid, "VmRSS"))

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        """/readyz says 200 (an agent without /readyz: its metrics answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                        timeout=10) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as err:
            return err.code == 404
        except OSError:
            return False

    def steps(self) -> tuple[dict[str, float], dict[str, float], float]:
        """From the log (info level): each start-up step's ms, the RSS (MB) after it,
        and the total ms."""
        ms: dict[str, float] = {}
        rss: dict[str, float] = {}
        total = 0.0
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError:
            return ms, rss, total
        for m in STEP_RE.finditer(text):
            ms[m["step"]] = float(m["ms"])
            if m["rss"]:
                rss[m["step"]] = float(m["rss"])
        done = DONE_RE.search(text)
        if done:
            total = float(done["ms"])
        return ms, rss, total

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> Metrics:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return Metrics.parse(r.read().decode())

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def drain(self, timeout: float) -> bool:
        """Wait until the user-space queue is empty on two scrapes in a row.

        Not "until the event count stops moving": the machine is shared, and other
        processes keep the agent busy with their own events.
        """
        deadline = time.monotonic() + timeout
        empty = 0
        while time.monotonic() < deadline:
            empty = empty + 1 if self.metrics().queue_depth == 0 else 0
            if empty >= 2:
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        self.hwm_kb = proc_status_kb(pid, "VmHWM")
        self.rss_peak_kb = max(self.rss_peak_kb, proc_status_kb(pid, "VmRSS"))
        self._stop_sampling.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_status = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_status = self.proc.wait()
        if self._sampler is not None:
            self._sampler.join()
        self.stderr_tail = self._tail(5) if self.exit_status else ""
        if self.out_path != "/dev/null":
            try:
                self.output_bytes = os.path.getsize(self.out_path)
                os.unlink(self.out_path)  # 1M watched opens are ~1 GB of JSON
            except OSError:
                self.output_bytes = 0
        self.proc = None

    @contextmanager
    def running(self) -> Iterator[Agent]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


# --- results ------------------------------------------------------------------------------

@dataclass
class AgentRun:
    """What one agent instance saw during one ON run."""

    phase: str
    delta: dict[str, Any]
    cpu_seconds: float
    rss_peak_mb: float
    hwm_mb: float
    output_bytes: int
    drained: bool
    exit_status: int | None
    stderr_tail: str = ""


@dataclass
class ABResult:
    name: str
    what: str
    ops: int
    off: list[float] = field(default_factory=list)
    on: list[float] = field(default_factory=list)
    agent: list[AgentRun] = field(default_factory=list)
    target_pct: float | None = None
    expect: dict[str, int] = field(default_factory=dict)   # event type -> per ON run
    foreign_progs: list[int] = field(default_factory=list)  # other mr_* progs, OFF runs
    floor_target: float | None = None   # points over the floor (FLOOR_TARGETS)
    # the other conditions (CONDITIONS but "on"): workload seconds, and their agents
    cond: dict[str, list[float]] = field(default_factory=dict)
    cond_agent: dict[str, list[AgentRun]] = field(default_factory=dict)

    def cond_pct(self, name: str) -> float:
        """A condition's overhead over OFF (medians), in percent."""
        return (statistics.median(self.cond[name]) / statistics.median(self.off) - 1) * 100

    def summary(self) -> dict[str, Any]:
        off, on = statistics.median(self.off), statistics.median(self.on)
        paired = [b / a for a, b in zip(self.off, self.on, strict=True)]
        return {
            "off_median_s": off, "on_median_s": on,
            "off_min_s": min(self.off), "off_max_s": max(self.off),
            "on_min_s": min(self.on), "on_max_s": max(self.on),
            "ratio": on / off, "overhead_pct": (on / off - 1) * 100,
            "paired_ratios": paired,
            "off_us_per_op": off / self.ops * 1e6, "on_us_per_op": on / self.ops * 1e6,
        }


@dataclass
class IngestTrial:
    rate_target: float       # 0 = as fast as the driver can
    ops: int
    seconds: float
    delta_at_end: dict[str, Any]     # metrics delta when the driver stopped (+ grace)
    delta_final: dict[str, Any]      # ... and after the agent drained (or gave up)
    backlog_at_end: float            # moray_queue_depth when the driver stopped
    cpu_seconds: float               # agent CPU during the driver's run
    sys_seconds: float               # ... of which in the kernel (reads, writes)
    kept_up: bool                    # no queue drops, every open emitted within the grace
    passed: bool                     # kept up and no ring-buffer drops either

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


@dataclass
class IngestResult:
    saturation: IngestTrial | None = None
    sat_processed_rate: float = 0.0   # open events emitted per second while saturated
    trials: list[IngestTrial] = field(default_factory=list)
    best_kept_up: float = 0.0         # highest rate user space kept up with (the search)
    lowest_not_kept_up: float = 0.0
    best_zero_drop: float = 0.0       # highest rate among the trials with no drop at all
    agent: list[AgentRun] = field(default_factory=list)
    files: int = 0                    # distinct files opened in turn (0: one file)
    pinned: str = ""                  # how the agent and the driver were placed


@dataclass
class StartupResult:
    ready_s: list[float] = field(default_factory=list)   # exec -> /readyz 200, per start
    total_ms: list[float] = field(default_factory=list)  # the agent's own "start-up done"
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    steps_rss: dict[str, list[float]] = field(default_factory=dict)  # RSS MB after a step
    hwm_ready_mb: list[float] = field(default_factory=list)  # VmHWM at ready
    rss_ready_mb: list[float] = field(default_factory=list)  # VmRSS at ready


@dataclass
class FloorResult:
    """bench/floor.py's table: condition -> (median us per open+close, overhead %)."""

    us: dict[str, float] = field(default_factory=dict)
    pct: dict[str, float] = field(default_factory=dict)
    output: str = ""


# --- the benchmarks -----------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.workdir = workdir
        self.loads = Workloads(workdir)
        self.unwatched_dir = workdir / "unwatched"
        self.watch_dir = workdir / "watched"
        self.agent = Agent(args.agent, workdir, args.agent_output,
                           str(self.watch_dir) + "/",
                           isolation_args(args.agent) + args.agent_arg)
        self.warnings: list[str] = []

    def setup(self) -> None:
        self.loads.build()
        if self.loads.kind != "c":
            self.warnings.append("gcc unavailable: Python workloads (bench/pyload.py) used; "
                                 "their own cost dilutes the overhead ratios")
        for d in (self.unwatched_dir, self.watch_dir):
            d.mkdir()
            (d / "file").write_text("moray bench\n")
        self.many_dir = self.watch_dir / "many"   # ingest-distinct: f0, f1, ...
        self.many_dir.mkdir()
        for i in range(DISTINCT_FILES):
            (self.many_dir / f"f{i}").write_bytes(b"")
        self.empty_policies = self.workdir / "no-policies"
        self.empty_policies.mkdir()
        loaded = moray_programs_loaded()
        if loaded:
            self.warnings.append(
                f"{loaded} moray BPF programs were already loaded before the run (another "
                "agent, or pins left under /sys/fs/bpf/moray: `moray-agent unload`); they run "
                "in every condition, the off baseline included")

    def ab_commands(self) -> dict[str, tuple[str, int, list[str], str | None, dict[str, int]]]:
        s, c = self.sizes, self.loads.cmd
        unw, wat = str(self.unwatched_dir / "file"), str(self.watch_dir / "file")
        return {
            "spawn": ("fork+exec /bin/true", s.spawn, c("spawn", s.spawn, "/bin/true"), None,
                      {"fork": s.spawn, "exec": s.spawn, "exit": s.spawn}),
            "open-unwatched": ("open/close, unwatched path", s.opens,
                               c("opens", unw, s.opens), None, {"open": 0}),
            "open-relative": ("open/close, unwatched, relative path", s.opens,
                              c("opens", "file", s.opens), str(self.unwatched_dir), {"open": 0}),
            "open-watched": ("open/close, watched path", s.opens_watched,
                             c("opens", wat, s.opens_watched), None, {"open": s.opens_watched}),
            "connect": ("loopback TCP connect+accept+close", s.connect,
                        c("connstorm", s.connect), None,
                        {"connect": s.connect, "accept": s.connect}),
            "change": ("chmod, unwatched file", s.opens, c("changes", unw, s.opens), None, {}),
        }

    def agent_run(self, phase: str, before: Metrics, cpu0: float, drain: float) -> AgentRun:
        a = self.agent
        drained = a.drain(drain)
        # the summaries of the last window: written by the kernel's sweeper within the
        # window (1 s) and a sweep (0.25 s) after the workload's last open
        time.sleep(AGG_SETTLE)
        drained = a.drain(drain) and drained
        after = a.metrics()
        cpu = a.cpu_seconds() - cpu0
        a.stop()
        run = AgentRun(phase=phase, delta=after.delta(before), cpu_seconds=cpu,
                       rss_peak_mb=a.rss_peak_kb / 1024, hwm_mb=a.hwm_kb / 1024,
                       output_bytes=a.output_bytes, drained=drained,
                       exit_status=a.exit_status, stderr_tail=a.stderr_tail)
        if a.exit_status:
            msg = (f"agent exited {a.exit_status} on SIGTERM ({phase}): "
                   f"{a.stderr_tail.splitlines()[-1] if a.stderr_tail else ''}")
            if msg not in self.warnings:
                self.warnings.append(msg)
        return run

    def run_ab(self, name: str) -> ABResult:
        what, ops, cmd, cwd, expect = self.ab_commands()[name]
        res = ABResult(name, what, ops, target_pct=TARGETS.get(name), expect=expect,
                       floor_target=FLOOR_TARGETS.get(name))
        run_workload(cmd, cwd)  # warm-up, agent off: page cache, binaries, allocator
        for r in range(self.sizes.rounds):
            foreign = other_moray_progs()
            if foreign is not None:
                res.foreign_progs.append(foreign)
            _, t = run_workload(cmd, cwd)
            res.off.append(t)
            self.progress(f"{name} round {r + 1}/{self.sizes.rounds}: off {t:.3f}s")
            for cond in self.args.conditions:
                if cond == "after-stop":
                    t = self.after_stop(cmd, cwd)
                    res.cond.setdefault(cond, []).append(t)
                    self.progress(f"{name} round {r + 1}/{self.sizes.rounds}: {cond} "
                                  f"{t:.3f}s")
                    continue
                extra = None if cond == "on" else [
                    *self.agent.extra, f"--policy-dir={self.empty_policies}"]
                self.agent.start(extra=extra)
                before, cpu0 = self.agent.metrics(), self.agent.cpu_seconds()
                _, t = run_workload(cmd, cwd)
                run = self.agent_run(f"{name} {cond} #{r + 1}", before, cpu0, drain=30)
                if cond == "on":
                    res.on.append(t)
                    res.agent.append(run)
                else:
                    res.cond.setdefault(cond, []).append(t)
                    res.cond_agent.setdefault(cond, []).append(run)
                self.progress(f"{name} round {r + 1}/{self.sizes.rounds}: {cond} {t:.3f}s "
                              f"(emitted {run.delta['emitted']}, drops "
                              f"{run.delta['ringbuf_drops'] + run.delta['queue_drops']})")
        return res

    def after_stop(self, cmd: list[str], cwd: str | None) -> float:
        """The workload after an agent that pinned under a private root has stopped
        (SIGTERM), with no policy; its pins are removed afterwards."""
        root = Path(f"/sys/fs/bpf/moray-bench-{os.getpid()}")
        extra = [a for a in self.agent.extra if a != "--no-pin"]
        extra += [f"--pin-root={root}", f"--policy-dir={self.empty_policies}",
                  f"--policy-status={self.workdir / 'policy-status.json'}"]
        self.agent.start(extra=extra)
        self.agent.stop()
        try:
            _, t = run_workload(cmd, cwd)
        finally:
            remove_pins(root)
        return t

    def run_startup(self) -> StartupResult:
        """Agent starts, one at a time, with the log at info level (the step lines)."""
        res = StartupResult()
        a = self.agent
        for i in range(self.sizes.startups):
            a.start(log_level="info")
            res.hwm_ready_mb.append(proc_status_kb(a.pid, "VmHWM") / 1024)
            res.rss_ready_mb.append(proc_status_kb(a.pid, "VmRSS") / 1024)
            res.ready_s.append(a.ready_s)
            ms, rss, total = a.steps()
            a.stop()
            res.total_ms.append(total)
            for k, v in ms.items():
                res.steps_ms.setdefault(k, []).append(v)
            for k, v in rss.items():
                res.steps_rss.setdefault(k, []).append(v)
            self.progress(f"startup {i + 1}/{self.sizes.startups}: ready after "
                          f"{a.ready_s:.2f}s (agent's own count {total / 1000:.2f}s), "
                          f"RSS {res.rss_ready_mb[-1]:.1f} MB, peak {res.hwm_ready_mb[-1]:.1f}")
        return res

    def run_floor(self) -> FloorResult:
        """bench/floor.py as it is, its table parsed."""
        s = self.sizes
        r = subprocess.run([sys.executable, str(HERE / "floor.py"), "--opens",
                            str(s.floor_opens), "--rounds", str(s.floor_rounds)],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            self.warnings.append(f"bench/floor.py exited {r.returncode}: "
                                 f"{r.stderr.strip().splitlines()[-1:]}")
            return FloorResult(output=r.stdout + r.stderr)
        res = FloorResult(output=r.stdout)
        for line in r.stdout.splitlines():
            m = FLOOR_RE.match(line)
            if m:
                res.us[m["cond"].strip()] = float(m["us"])
                res.pct[m["cond"].strip()] = float(m["pct"])
        self.progress("floor: " + ", ".join(f"{k} {v:+.1f}%" for k, v in res.pct.items()))
        return res

    def ingest_trial(self, rate: float, seconds: float, phase: str,
                     samples: list[tuple[float, float, float]] | None = None) -> IngestTrial:
        """One driver run against a fresh agent. rate 0 = as fast as the driver can."""
        a = self.agent
        count = 10**12 if rate == 0 else int(rate * seconds)
        limit = seconds if rate == 0 else seconds * 1.5  # paced: only a guard
        files = self.ingest.files
        cmd = self.loads.cmd("opens", str(self.many_dir if files else self.watch_dir / "file"),
                             count, rate, limit, *([files] if files else []))
        agent_cpu, driver = self.placement()
        cmd = driver + cmd
        a.start(cpu=agent_cpu)
        try:
            before, cpu0 = a.metrics(), a.cpu_seconds()
            sys0 = proc_cpu_split(a.pid)[1]
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            while proc.poll() is None:
                time.sleep(0.5)
                if samples is not None:
                    m = a.metrics()
                    samples.append((time.monotonic() - t0, m.events.get("open", 0)
                                    - before.events.get("open", 0), m.queue_depth))
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {err.strip()}")
            ops_s, el_s = out.split()
            ops, elapsed = int(ops_s), float(el_s)
            if samples is None:
                time.sleep(1.0)  # grace: a keeping-up agent emits the tail within this
            at_end = a.metrics()
            cpu = a.cpu_seconds() - cpu0
            sys_s = proc_cpu_split(a.pid)[1] - sys0
            d_end = at_end.delta(before)
            # user space kept up: nothing dropped by its queue, and every record the kernel
            # delivered emitted (a record the ring buffer dropped never reached user space;
            # those are counted apart, in `passed`)
            kept_up = d_end["queue_drops"] == 0 and (
                d_end["events"].get("open", 0) + d_end["ringbuf_drops"] >= ops)
            passed = kept_up and d_end["ringbuf_drops"] == 0
            run = self.agent_run(phase, before, cpu0,
                                 drain=3 if self.args.quick else 30)
        except BaseException:
            a.stop()
            raise
        trial = IngestTrial(rate_target=rate, ops=ops, seconds=elapsed, delta_at_end=d_end,
                            delta_final=run.delta, backlog_at_end=at_end.queue_depth,
                            cpu_seconds=cpu, sys_seconds=sys_s, kept_up=kept_up,
                            passed=passed)
        self.ingest.agent.append(run)
        return trial

    def placement(self) -> tuple[int | None, list[str]]:
        """Ingest: the agent on CPU 0 and the driver on CPU 1 (one core for the agent)."""
        if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
            return None, []
        return 0, ["taskset", "-c", "1"]

    def run_ingest(self, files: int = 0) -> IngestResult:
        s = self.sizes
        self.ingest = res = IngestResult(files=files)
        _cpu, driver = self.placement()
        res.pinned = ("agent on CPU 0, driver on CPU 1 (taskset)" if driver
                      else "not pinned (one CPU or no taskset)")
        samples: list[tuple[float, float, float]] = []
        sat = self.ingest_trial(0, s.sat_seconds, "ingest saturation", samples)
        res.saturation = sat
        # processed rate while saturated: open events emitted per second over the driver's run
        res.sat_processed_rate = sat.delta_at_end["events"].get("open", 0) / sat.seconds
        self.progress(f"ingest saturation: driver {sat.rate:,.0f} opens/s, agent emitted "
                      f"{res.sat_processed_rate:,.0f} ev/s, drops "
                      f"{sat.delta_final['ringbuf_drops']}+{sat.delta_final['queue_drops']}")
        lo, hi = 0.0, 0.0
        rate = max(1000.0, round(res.sat_processed_rate * 0.8, -3))
        for i in range(s.trials):
            t = self.ingest_trial(rate, s.trial_seconds, f"ingest trial {rate:,.0f}/s")
            res.trials.append(t)
            if t.kept_up:
                lo = max(lo, t.rate)
            else:
                hi = min(hi, rate) if hi else rate
            if t.passed:
                res.best_zero_drop = max(res.best_zero_drop, t.rate)
            self.progress(f"ingest trial {i + 1}/{s.trials}: {rate:,.0f}/s target, "
                          f"{t.rate:,.0f}/s driven, {'kept up' if t.kept_up else 'FELL BEHIND'} "
                          f"(emitted {t.delta_at_end['events'].get('open', 0)}/{t.ops}, "
                          f"drops {t.delta_at_end['ringbuf_drops']}+"
                          f"{t.delta_at_end['queue_drops']})")
            if not hi:
                rate *= 1.25
            elif not lo:
                rate *= 0.6
            else:
                rate = (lo + hi) / 2
            rate = max(1000.0, round(rate, -3))
        res.best_kept_up, res.lowest_not_kept_up = lo, hi
        return res

    def progress(self, msg: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- report -------------------------------------------------------------------------------

FLOOR_RE = re.compile(r"^(?P<cond>.+?)\s+(?P<us>[\d.]+)us\s+(?P<pct>[-+][\d.]+)%")


def remove_pins(root: Path) -> None:
    """Every pin under root, then root (a pinned link goes with its last pin), as
    agent/bpf/pins.py `unload` does; held tasks are not released (no policy here)."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
        for d in dirnames:
            os.rmdir(os.path.join(dirpath, d))
    os.rmdir(root)


def agent_version() -> str:
    """The commit the agent runs from, and whether agent/ or bpf/ have local changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "agent", "bpf"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in agent/ or bpf/" if dirty else "")


def machine() -> dict[str, Any]:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg": os.getloadavg(),
            "mem_total_mb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20}


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def fmt_s(x: float) -> str:
    return f"{x:.3f}"


def print_report(out: Callable[[str], None], meta: dict[str, Any],
                 ab: list[ABResult], ingests: list[IngestResult],
                 rss: tuple[float, float, str], startup: StartupResult | None = None,
                 floor: FloorResult | None = None) -> None:
    out("")
    out(f"moray agent benchmark  {meta['date']}  ({'quick' if meta['quick'] else 'full'})")
    m = meta["machine"]
    out(f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_total_mb']} MB, "
        f"Linux {m['kernel']}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg'])}")
    out(f"workloads: {meta['workloads']}; {meta['rounds']} rounds OFF/ON alternated, "
        f"medians, spread = min..max")
    out(f"agent: {meta['agent_cmd']}")
    policies = ("/etc/moray/policies exists" if meta["policies"]
                else "none (/etc/moray/policies absent)")
    out(f"agent code: {meta['agent_version']}; policies: {policies}")
    out(f"agent output: {meta['agent_output']}")
    out("")
    print_floor_startup(out, startup, floor)
    print_ab(out, ab, floor)
    print_ingest(out, ingests)
    peak, hwm, where = rss
    if peak:
        out(f"agent peak RSS: {max(peak, hwm):.1f} MB (VmHWM {hwm:.1f} MB, sampled VmRSS "
            f"{peak:.1f} MB) in '{where}'; target <= {TARGETS['rss']:.0f} MB "
            f"{verdict(max(peak, hwm) <= TARGETS['rss'])}")


def print_floor_startup(out: Callable[[str], None], startup: StartupResult | None,
                        floor: FloorResult | None) -> None:
    if floor is not None and floor.pct:
        out("floor (bench/floor.py, same run: empty BPF programs, open+close of one file):")
        for cond, pct in floor.pct.items():
            out(f"  {cond:<48} {floor.us[cond]:7.3f} us/op {pct:+7.1f} %")
        out("")
    if startup is not None and startup.ready_s:
        med = statistics.median
        ready = med(startup.ready_s)
        out(f"start-up, {len(startup.ready_s)} starts: exec -> /readyz 200 median "
            f"{ready:.2f} s ({', '.join(f'{x:.2f}' for x in startup.ready_s)}); "
            f"target <= {TARGETS['ready']:.0f} s {verdict(ready <= TARGETS['ready'])}")
        out(f"  RSS at ready: median {med(startup.rss_ready_mb):.1f} MB, peak (VmHWM) "
            f"{med(startup.hwm_ready_mb):.1f} MB")
        out(f"  {'step (median)':<24} {'ms':>8} {'RSS after, MB':>14}")
        for k, v in startup.steps_ms.items():
            rss_after = startup.steps_rss.get(k)
            after = f"{med(rss_after):.1f}" if rss_after else "-"
            out(f"  {k:<24} {med(v):>8.0f} {after:>14}")
        out("")


def print_ab(out: Callable[[str], None], ab: list[ABResult], floor: FloorResult | None
             ) -> None:
    if ab:
        hdr = (f"{'benchmark':<40} {'ops':>9} {'off s (min..max)':>24} {'on s (min..max)':>24} "
               f"{'overhead':>9} {'target':>8}")
        out(hdr)
        out("-" * len(hdr))
        for r in ab:
            s = r.summary()
            tgt = f"<={r.target_pct:.0f} %" if r.target_pct is not None else ""
            if r.target_pct is not None:
                tgt += " " + verdict(s["overhead_pct"] <= r.target_pct)
            floor_pct = floor.pct.get(FLOOR_OF.get(r.name, "")) if floor else None
            if r.floor_target is not None:
                tgt = f"floor+{r.floor_target:.0f}"
                if floor_pct is not None:
                    tgt += " " + verdict(s["overhead_pct"] - floor_pct <= r.floor_target)
            off = f"{fmt_s(s['off_median_s'])} ({fmt_s(s['off_min_s'])}..{fmt_s(s['off_max_s'])})"
            on = f"{fmt_s(s['on_median_s'])} ({fmt_s(s['on_min_s'])}..{fmt_s(s['on_max_s'])})"
            out(f"{r.what:<40} {r.ops:>9,} {off:>24} {on:>24} {s['overhead_pct']:>+8.1f}% {tgt}")
        out("")
        out("per-op cost and what the agent did in the ON runs (summed over rounds):")
        for r in ab:
            s = r.summary()
            emitted = sum(a.delta["emitted"] for a in r.agent)
            drops = sum(a.delta["ringbuf_drops"] + a.delta["queue_drops"] for a in r.agent)
            seen = ", ".join(
                f"{t} {sum(a.delta['events'].get(t, 0) for a in r.agent):,}"
                f" + {sum(a.delta.get('aggregated', {}).get(t, 0) for a in r.agent):,}"
                f" in summaries (workload {n * len(r.agent):,})"
                for t, n in r.expect.items())
            cpu = sum(a.cpu_seconds for a in r.agent)
            per_ev = f"{cpu / emitted * 1e6:.1f} us agent CPU/event" if emitted else ""
            paired = " ".join(f"{x:.3f}" for x in s["paired_ratios"])
            out(f"  {r.name:<15} {s['off_us_per_op']:.2f} -> {s['on_us_per_op']:.2f} us/op; "
                f"paired on/off ratios {paired}")
            out(f"  {'':<15} events: {seen}; all types {emitted:,} (the rest is other load); "
                f"drops {drops:,}; agent CPU {cpu:.1f}s, {per_ev}")
            calls = SYSCALLS_PER_OP.get(r.name, 0) * r.ops * len(r.agent)
            if calls:
                out(f"  {'':<15} agent CPU per 1,000 workload syscalls: "
                    f"{cpu / calls * 1e3 * 1e3:.2f} ms ({SYSCALLS_PER_OP[r.name]} per op)")
            floor_pct = floor.pct.get(FLOOR_OF.get(r.name, "")) if floor else None
            if floor_pct is not None:
                out(f"  {'':<15} overhead {s['overhead_pct']:+.1f} % = floor "
                    f"{floor_pct:+.1f} % + moray's share {s['overhead_pct'] - floor_pct:+.1f}"
                    f" points")
            for cond, ts in r.cond.items():
                pct = r.cond_pct(cond)
                share = (f" (floor {floor_pct:+.1f} % + {pct - floor_pct:+.1f} points)"
                         if floor_pct is not None and cond != "after-stop" else "")
                ratios = " ".join(f"{b / a:.3f}" for a, b in zip(r.off, ts, strict=False))
                out(f"  {'':<15} {cond}: {statistics.median(ts) / r.ops * 1e6:.2f} us/op, "
                    f"overhead {pct:+.1f} %{share}; paired ratios {ratios}")
            fp = r.foreign_progs
            if fp and max(fp) > 0:
                out(f"  {'':<15} other moray BPF programs loaded during OFF runs: "
                    f"{min(fp)}..{max(fp)} (someone else's agent/tests)")
        out("")


def print_ingest(out: Callable[[str], None], ingests: list[IngestResult]) -> None:
    for ingest in ingests:
        if ingest.saturation is None:
            continue
        sat = ingest.saturation
        goal = TARGETS["ingest"]
        what = (f"{ingest.files:,} distinct watched files in turn" if ingest.files
                else "one watched file")
        out(f"ingest ({what}, one driver process; {ingest.pinned}):")
        out(f"  saturation: driver {sat.rate:,.0f} opens/s for {sat.seconds:.1f}s; agent emitted "
            f"{ingest.sat_processed_rate:,.0f} events/s meanwhile "
            f"(agent CPU {sat.cpu_seconds / sat.seconds * 100:.0f} % of one core); "
            f"ring-buffer drops {sat.delta_final['ringbuf_drops']:,}, queue drops "
            f"{sat.delta_final['queue_drops']:,}, kernel records "
            f"{sat.delta_final['kernel_records']:,}, emitted {sat.delta_final['emitted']:,}")
        for t in ingest.trials:
            out(f"  paced {t.rate_target:>9,.0f}/s: driven {t.rate:>9,.0f}/s x {t.seconds:.1f}s "
                f"emitted {t.delta_at_end['events'].get('open', 0):>9,}/{t.ops:,} within 1s, "
                f"drops {t.delta_at_end['ringbuf_drops']}+{t.delta_at_end['queue_drops']}, "
                f"backlog {t.backlog_at_end:,.0f} -> "
                + ("zero drops, kept up" if t.passed else
                   "kept up, ring-buffer drops only" if t.kept_up else "FELL BEHIND"))
        best = ingest.best_kept_up
        out(f"  highest rate user space kept up with (no queue drop, no backlog): "
            f"{best:,.0f} events/s"
            + (f" (fell behind at {ingest.lowest_not_kept_up:,.0f}/s)"
               if ingest.lowest_not_kept_up else " (never fell behind)")
            + f"; target >= {goal:,.0f}/s {verdict(best >= goal)}")
        out(f"  highest rate with zero drops of any kind: {ingest.best_zero_drop:,.0f} events/s")
        per_k = [t.cpu_seconds / t.ops * 1e6 for t in ingest.trials if t.ops]
        sys_k = [t.sys_seconds / t.ops * 1e6 for t in ingest.trials if t.ops]
        if per_k:
            # the driver on its own CPU may not reach the agent's limit (the kernel's
            # per-open cost): the agent's CPU per event says what one full core would take
            cap = 1e6 / statistics.median(per_k) if statistics.median(per_k) else 0.0
            out(f"  agent CPU per 1,000 events (paced trials, median): "
                f"{statistics.median(per_k):.2f} ms, of which {statistics.median(sys_k):.2f}"
                f" ms in the kernel; one full core at that cost: {cap:,.0f} events/s")
        out("")


@dataclass
class Results:
    ab: list[ABResult] = field(default_factory=list)
    ingests: list[IngestResult] = field(default_factory=list)
    startup: StartupResult | None = None
    floor: FloorResult | None = None

    def run(self, bench: Bench, names: list[str]) -> None:
        """The benchmarks in `names`, in order; results kept as each ends."""
        for name in names:
            if name == "ingest":
                self.ingests.append(bench.run_ingest())
            elif name == "ingest-distinct":
                self.ingests.append(bench.run_ingest(DISTINCT_FILES))
            elif name == "startup":
                self.startup = bench.run_startup()
            elif name == "floor":
                self.floor = bench.run_floor()
            else:
                self.ab.append(bench.run_ab(name))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (< 2 minutes)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help=f"run only these ({', '.join(ALL_BENCHES)}); repeat or comma-separate")
    ap.add_argument("--conditions", default=None, metavar="LIST",
                    help=f"agent conditions of each A/B benchmark, comma-separated, from "
                         f"{', '.join(CONDITIONS)} (default all; quick: on)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--rounds", type=int, help="OFF/ON rounds (default 3, quick 2)")
    ap.add_argument("--agent", default=str(DEFAULT_AGENT), help="moray-agent executable")
    ap.add_argument("--agent-version", metavar="TEXT",
                    help="what to report as the agent's version (default: this repo's commit)")
    ap.add_argument("--agent-output", choices=("file", "devnull"), default="file",
                    help="agent events to a file on disk (deleted after each run) or /dev/null")
    ap.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `moray-agent run` (repeatable), "
                         "e.g. --agent-arg=--no-containers")
    ap.add_argument("--workdir", default="/var/tmp",
                    help="where the temporary files live (outside the watched set)")
    args = ap.parse_args(argv)
    args.names = [n for o in args.only for n in o.split(",") if n] or list(ALL_BENCHES)
    unknown = [n for n in args.names if n not in ALL_BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(ALL_BENCHES)}")
    conds = args.conditions or ("on" if args.quick else ",".join(CONDITIONS))
    args.conditions = [c for c in conds.split(",") if c]
    bad = [c for c in args.conditions if c not in CONDITIONS]
    if bad or "on" not in args.conditions:
        ap.error(f"--conditions: from {', '.join(CONDITIONS)}, with on")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py must run as root (the agent loads BPF programs)", file=sys.stderr)
        return 2
    if not os.access(args.agent, os.X_OK):
        print(f"no agent at {args.agent}: run `make install` first", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})

    workdir = Path(tempfile.mkdtemp(prefix="moray-bench-", dir=args.workdir))
    bench = Bench(args, sizes, workdir)
    failed: str | None = None
    t_start = time.monotonic()
    meta: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick,
                            "machine": machine(), "rounds": sizes.rounds, "sizes": asdict(sizes)}
    results = Results()
    try:
        bench.setup()
        meta["workloads"] = (f"C ({bench.loads.compiler})" if bench.loads.kind == "c"
                             else "Python (no gcc)")
        meta["agent_cmd"] = (f"{args.agent} --log-level warning run --output OUT --metrics-port "
                             f"PORT --watch {bench.watch_dir}/ {' '.join(bench.agent.extra)}"
                             ).rstrip()
        meta["agent_version"] = args.agent_version or agent_version()
        meta["policies"] = os.path.isdir("/etc/moray/policies")
        meta["agent_output"] = ("/dev/null" if args.agent_output == "devnull" else
                                f"file on disk under {workdir} (deleted after each run)")
        results.run(bench, args.names)
    except BenchError as err:
        failed = str(err)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        bench.agent.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["elapsed_s"] = time.monotonic() - t_start
    ab, ingests, startup, floor = results.ab, results.ingests, results.startup, results.floor

    runs = ([a for r in ab for a in r.agent]
            + [a for r in ab for c in r.cond_agent.values() for a in c]
            + [a for i in ingests for a in i.agent])
    peak = max(runs, key=lambda a: max(a.hwm_mb, a.rss_peak_mb), default=None)
    rss = ((peak.rss_peak_mb, peak.hwm_mb, peak.phase) if peak else (0.0, 0.0, ""))
    if ab or ingests or startup or floor:
        print_report(print, meta, ab, ingests, rss, startup, floor)
    for w in bench.warnings:
        print(f"note: {w}")
    print(f"(took {meta['elapsed_s']:.0f}s)")
    if args.json:
        doc = {"meta": meta, "targets": TARGETS, "warnings": bench.warnings, "failed": failed,
               "ab": [{**asdict(r), "summary": r.summary()} for r in ab],
               "ingest": [asdict(i) for i in ingests],
               "startup": asdict(startup) if startup else None,
               "floor": asdict(floor) if floor else None,
               "rss_peak": {"vmrss_sampled_mb": rss[0], "vmhwm_mb": rss[1], "phase": rss[2]}}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if failed:
        print(f"benchmark failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
