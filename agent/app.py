"""The agent's start-up and teardown.

Start-up is an ordered list of named steps (`Agent.steps`, the one list; docs/notes.md
repeats it and tests/unit/test_app.py checks that it does); each may register a
teardown, and teardowns always run, in reverse, however the agent stops (SIGTERM,
SIGINT, an error in a step):

    check_host, start_metrics, mount_fs, probe_kernel, load_rules, load_export, adopt_pins,
    load_bpf, fill_watch, start_reader, scan_proc, start_enrich, apply_policies,
    connect_control_plane, start_pipeline

The metrics port answers from the second step on: /readyz says 503 and which step runs
until every step is done (BPF programs attached, policies applied, the pipeline running),
then 200; systemd gets READY=1 at the same moment (agent/output/health.py,
moray/sdnotify.py). Each step's duration is logged, and the total.

The BPF programs are attached and the reader is running *before* /proc is scanned, so a
process that starts during the scan is seen by its fork/exec events; nothing slips between.
What happens to a record after the reader is agent/pipeline's (decode -> process tree ->
container identity -> format -> detect -> route).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moray import sdnotify
from moray.agent.bpf import abi, watch
from moray.agent.bpf.abi import Stat
from moray.agent.bpf.loader import BpfObject, ensure_bpffs, ensure_tracefs, object_path
from moray.agent.bpf.ringbuf import RingBuffer
from moray.agent.enrich.proctree import ProcessTree
from moray.agent.events.reader import TYPE_OF_OP, BatchQueue, Reader
from moray.agent.events.types import LossReport
from moray.agent.output.health import Health, HealthServer
from moray.agent.output.jsonl import EventSink, JsonLines
from moray.agent.output.loss import LossReporter
from moray.agent.output.memory import memory_mb, trim
from moray.agent.output.metrics import AgentCollector, Stats
from moray.agent.output.schema import Formatter
from moray.agent.pipeline import Pipeline
from moray.agent.pipeline.route import Router
from moray.errors import ConfigError, KernelError

log = logging.getLogger(__name__)

# Ring-buffer wake-ups (bpf/lib/common.h emit): the kernel wakes the reader only once this
# much data waits (or 1/16 of the ring, if smaller); otherwise the reader looks every
# READ_INTERVAL seconds. An event therefore reaches the output at most ~20 ms later than
# it would with a wake-up per record, and a trickle of events (a fork+exec+exit per
# process) no longer costs two thread switches in the agent per record.
WAKEUP_BYTES = 256 << 10
READ_INTERVAL = 0.02


# start-up steps after which freed memory is given back to the kernel (malloc_trim): the
# BTF and object parses of load_bpf, the /proc walk of scan_proc (agent/output/memory.py)
TRIM_AFTER = frozenset({"load_bpf", "scan_proc"})

# The file-open exits of bpf/progs/file.bpf.c: one body (on_exit(ctx->ret)) under four
# tracepoints, ~0.9M instructions for the verifier each: loaded once (BpfObject.share)
FILE_EXIT_PROGRAMS = ("mr_exit_openat", "mr_exit_open", "mr_exit_openat2", "mr_exit_creat")


def log_profile(obj: BpfObject, attach_ms: float) -> None:
    """--startup-profile: the verifier's figures per loaded program, costliest first."""
    stats = sorted(obj.verified.values(), key=lambda v: -v.verify_us)
    log.info("start-up profile: %d programs verified in %d ms (%d instructions processed), "
             "attached in %d ms", len(stats), sum(v.verify_us for v in stats) // 1000,
             sum(v.insns for v in stats), round(attach_ms))
    for v in stats:
        log.info("start-up profile: %-24s %8d insns %8.1f ms", v.program, v.insns,
                 v.verify_us / 1000, extra={"program": v.program, "insns": v.insns,
                                            "verify_us": v.verify_us})


class AgentError(KernelError):
    """A start-up step failed; the message says what to do about it."""


@dataclass
class Config:
    output: str = "-"
    node: str = field(default_factory=socket.gethostname)
    proc: str = "/proc"
    host_root: str = "/"
    btf: str = "/sys/kernel/btf/vmlinux"
    metrics_port: int | None = 9464
    metrics_addr: str = "127.0.0.1"
    ring_size: int = 8 << 20       # ~50k records; mapped once, so it adds 8 MiB to RSS
    queue_records: int = 65536     # user-space backlog bound; at most 8 MiB too (reader.py)
    loss_report_interval: float = 10.0  # at most one `loss` event per this many seconds
    args_max: int = 1024
    watch: tuple[str, ...] = ()          # extra watched prefixes
    default_watch: bool = True
    containers: bool = True
    duration: float | None = None        # stop after this many seconds (tests, benchmarks)
    policy_dir: str = "/etc/moray/policies"  # runtime policies (agent/policy); watched
    pin_root: str | None = "/sys/fs/bpf/moray"  # None: nothing pinned, nothing adopted
    policy_status: str | None = "/run/moray/policy-status.json"
    # which policy each slot held (agent/policy/slots.py); None: beside the pins'
    # run-time state (slots.default_path of pin_root); nothing when nothing is pinned
    slot_table: str | None = None
    # control plane (agent/controlplane): None = local mode
    server: str | None = None            # host:7443
    enroll_token: str | None = None      # first start only
    ca_file: str | None = None           # server CA (PEM), first start only
    ca_sha256: str | None = None         # or its pinned fingerprint
    enroll_server: str | None = None     # default: server host, port 7444
    cp_data_dir: str = "/var/lib/moray-agent"  # identity, policy cache, event spool
    labels: tuple[tuple[str, str], ...] = ()  # host labels policy scopes select on
    rules: tuple[str, ...] = ()          # detection rule files (agent/detect), after defaults
    default_rules: bool = True
    # open records through the compiled hot path when nothing needs them as dicts
    # (agent/pipeline/fastopen.py; the same bytes): --no-fast-open turns it off
    fast_open: bool = True
    # repeated identical opens counted in the kernel within a window, then summarised
    # (bpf/progs/agg.bpf.c, agent/events/aggregate.py): --no-aggregate turns it off
    aggregate: bool = True
    aggregate_window: float = 1.0   # seconds
    syslog: tuple[str, ...] = ()         # alert outputs (agent/output/siem.py)
    cef: tuple[str, ...] = ()
    webhook: tuple[str, ...] = ()
    alert_format: str = "moray"          # moray | falco: alerts in the JSON output and
    #                                      the syslog/webhook bodies (agent/output/falco.py)
    export_allow: tuple[str, ...] = ()   # export filters (agent/output/filters.py)
    export_deny: tuple[str, ...] = ()
    otlp_endpoint: str | None = None     # OpenTelemetry export (agent/output/otlp.py)
    otlp_protocol: str | None = None
    otlp_headers: tuple[str, ...] = ()
    otlp_insecure: bool = False
    otlp_metrics_interval: float = 60.0
    otlp_body: str = "json"              # json | map (agent/output/otlp.py)
    startup_profile: bool = False        # log the verifier's figures per program at start
    # file opens in flight in task storage where the kernel allows it (probed), else in a
    # hash by thread id (bpf/maps/files.h); False: the hash everywhere (--no-task-storage)
    task_storage: bool = True


Teardown = Callable[[], None]


class Agent:
    def __init__(self, cfg: Config, sink: EventSink | None = None) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.stop_event = threading.Event()
        self._teardowns: list[tuple[str, Teardown]] = []
        self.sink: EventSink | None = sink
        self.obj: BpfObject | None = None
        self.ring: RingBuffer | None = None
        self.queue = BatchQueue(cfg.queue_records)
        self.reader: Reader | None = None
        self.tree = ProcessTree(cfg.proc)
        self.resolver: Any | None = None
        self.features: Any | None = None
        self.pins: Any | None = None     # agent.bpf.pins.Pins
        self.hooks: Any | None = None    # agent.bpf.pins.Hooks: enforcement by hook kind
        self.sweeper: Any | None = None  # agent.events.aggregate.Sweeper
        self.policy: Any | None = None   # agent.policy.engine.PolicyEngine
        self.detector: Any | None = None  # agent.detect.stage.DetectStage
        self.cp_client: Any | None = None  # agent.controlplane.ControlPlaneClient
        self.pipeline: Pipeline | None = None
        self.export_filter: Any | None = None  # agent.output.filters.ExportFilter
        self.otlp: Any | None = None     # agent.output.otlp.OtlpExport
        self.health = Health()
        self.http: HealthServer | None = None
        self.steps: list[tuple[str, Callable[[], None]]] = [
            ("check_host", self.check_host),
            ("start_metrics", self.start_metrics),
            ("mount_fs", self.mount_fs),
            ("probe_kernel", self.probe_kernel),
            ("load_rules", self.load_rules),
            ("load_export", self.load_export),
            ("adopt_pins", self.adopt_pins),
            ("load_bpf", self.load_bpf),
            ("fill_watch", self.fill_watch),
            ("start_reader", self.start_reader),
            ("scan_proc", self.scan_proc),
            ("start_enrich", self.start_enrich),
            ("apply_policies", self.apply_policies),
            ("connect_control_plane", self.connect_control_plane),
            ("start_pipeline", self.start_pipeline),
        ]

    # --- steps ------------------------------------------------------------------------

    def check_host(self) -> None:
        for prefix in self.cfg.watch:  # bad input is refused before anything is loaded
            try:
                watch.key(prefix)
            except ValueError as err:
                raise AgentError(f"--watch: {err}") from err
        if os.geteuid() != 0:
            raise AgentError("moray-agent needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to "
                             "load BPF programs: run it with sudo or as the systemd service")
        if not os.path.exists(self.cfg.btf):
            raise AgentError(f"kernel BTF not found at {self.cfg.btf}: moray's CO-RE programs "
                             "need a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8+)")
        try:
            object_path("moray.bpf.o")
        except FileNotFoundError as err:
            raise AgentError(str(err)) from err

    def mount_fs(self) -> None:
        if not ensure_tracefs():
            raise AgentError("tracefs is not mounted and cannot be: tracepoints cannot attach")
        ensure_bpffs()

    def probe_kernel(self) -> None:
        from moray.agent.bpf.features import probe

        self.features = probe(self.cfg.proc, self.cfg.btf)
        tiers = {k: str(v) for k, v in self.features.tiers().items()}
        log.info("enforcement tiers on this kernel: %s", tiers)
        if not self.features.cgroup_v2:
            log.warning("no cgroup v2 mount: network events and container ids are unavailable")

    def load_bpf(self) -> None:
        obj = BpfObject.open(object_path("moray.bpf.o"))
        self._teardowns.append(("close_bpf", obj.close))
        lsm = bool(self.features and self.features.bpf_lsm)
        from moray.agent.policy.programs import host_root as host_root_settings
        from moray.agent.policy.programs import path_root

        open_ts = self.cfg.task_storage and bool(self.features and self.features.task_storage)
        log.info("file opens in flight kept in %s",
                 "task storage" if open_ts else "a hash by thread id",
                 extra={"open_state": "task" if open_ts else "hash"})
        obj.set_rodata({"cfg_self_tgid": os.getpid(), "cfg_args_max": self.cfg.args_max,
                        "cfg_exec_lsm": int(lsm), **host_root_settings(self.cfg.proc),
                        **path_root(self.cfg.proc, self.cfg.host_root),
                        "cfg_wakeup_bytes": min(self.cfg.ring_size // 16, WAKEUP_BYTES),
                        "cfg_open_ts": int(open_ts),
                        "cfg_agg_ns": int(self.cfg.aggregate_window * 1e9)
                        if self.cfg.aggregate else 0})
        obj.set_max_entries("mr_events", self.cfg.ring_size)
        cg = self.features.cgroup_v2 if self.features else None
        if not cg:
            obj.disable([n for n, sec, _ in obj.programs() if sec.startswith("cgroup/")])
        from moray.agent.bpf.btf import Btf
        from moray.agent.bpf.libbpf import BTF_KIND_FUNC, BTF_KIND_TYPEDEF
        from moray.agent.policy.programs import programs_to_skip

        btf_path = self.features.btf_path if self.features else "/sys/kernel/btf/vmlinux"
        with Btf(btf_path) as kbtf:
            skipped = programs_to_skip(((n, sec) for n, sec, _ in obj.programs()), lsm,
                                       has_btf=lambda n: kbtf.has(n, BTF_KIND_TYPEDEF),
                                       fmod_ret=bool(self.features and self.features.fmod_ret),
                                       has_func=lambda n: kbtf.has(n, BTF_KIND_FUNC))
        obj.disable(skipped)
        from moray.agent.policy.programs import args_lsm

        args_bits, args_skip = args_lsm(lsm, self.cfg.btf)
        obj.set_rodata({"cfg_args_lsm": args_bits})
        obj.disable(args_skip)
        from moray.agent.detect import programs as detect_programs

        names = [n for n, _s, _p in obj.programs()]
        obj.disable(detect_programs.programs_to_skip((n, sec) for n, sec, _ in obj.programs()))
        obj.disable(detect_programs.unused(names, self._rule_syscalls()))
        from moray.agent.policy.programs import KINDS, ON_DEMAND, SAME_CODE, is_enforcement

        if self.pins is not None:
            self.pins.prepare(obj, ON_DEMAND)
        obj.share((*SAME_CODE, *detect_programs.same_code(names), FILE_EXIT_PROGRAMS))
        obj.load(profile=self.cfg.startup_profile)
        t0 = time.monotonic()
        obj.attach_all(cg, skip=ON_DEMAND)
        attach_ms = (time.monotonic() - t0) * 1000
        if self.pins is not None:
            self.pins.commit(obj, {n for n, _s, _p in obj.attachable() if is_enforcement(n)})
        from moray.agent.bpf.pins import Hooks

        self.hooks = Hooks(obj, KINDS, self.pins.links_dir if self.pins is not None else None,
                           cg)
        self._teardowns.append(("release_hooks", self.release_hooks))
        self.obj = obj
        log.info("attached %d BPF programs (%d loaded, %d sharing one's code)",
                 len(obj.links), sum(1 for _ in obj.attachable()) - len(obj.shared),
                 len(obj.shared))
        if self.cfg.startup_profile:
            log_profile(obj, attach_ms)

    def _rule_syscalls(self) -> set[str] | None:
        """The syscall names the loaded detection rules can match (None: every one)."""
        rules = getattr(getattr(self.detector, "detector", None), "rules", None)
        if rules is None:
            return set()
        return None if rules.any_syscall else set(rules.by_syscall)

    def release_hooks(self) -> None:
        """At stop: hook kinds no enforcing policy needs are detached and unpinned
        (agent/bpf/pins.py Hooks.release); what stays is logged. The live configuration
        is read from the kernel's maps: an agent that fails before it published keeps
        what an earlier agent pinned for its enforcing policies."""
        if self.hooks is None or self.obj is None:
            return
        from moray.agent.policy.apply import MAP_NAMES, Applier
        from moray.agent.policy.programs import kinds_needed

        conf = Applier({n: self.obj.map(n) for n in MAP_NAMES}).live()[0]
        kept = self.hooks.release(kinds_needed(conf, enforcing=True)
                                  if self.cfg.pin_root is not None else {})
        log.info("enforcement left pinned: %s", ", ".join(kept) or "none",
                 extra={"kinds": kept})

    def fill_watch(self) -> None:
        assert self.obj is not None
        prefixes = list(self.cfg.watch)
        if self.cfg.default_watch:
            prefixes += list(watch.DEFAULT_WATCH) + watch.ssh_dirs(
                os.path.join(self.cfg.host_root, "etc/passwd"))
        if self.detector is not None:
            prefixes += list(self.detector.watch)  # what the detection rules need reported
        rows = watch.build(prefixes, watch.DEFAULT_IGNORE if self.cfg.default_watch else ())
        watch.apply(self.obj.map("mr_watch"), rows, anc=self.obj.map("mr_watch_anc"),
                    gen=self.obj.map("mr_pathgen"))

    def start_reader(self) -> None:
        assert self.obj is not None
        events = self.obj.map("mr_events")  # a reused (pinned) ring keeps its own size
        self.ring = RingBuffer(events.fd, events.max_entries)
        self.reader = Reader(self.ring, self.queue, poll_timeout=READ_INTERVAL)
        self.reader.start()
        self.health.watch_thread("reader", self.reader)

        def stop_reader() -> None:
            assert self.reader is not None and self.ring is not None
            self.reader.stop()
            self.reader.join(5)
            self.queue.close()
            self.ring.close()

        self._teardowns.append(("stop_reader", stop_reader))

    def scan_proc(self) -> None:
        n = self.tree.scan_proc()
        log.info("process tree: %d processes from %s", n, self.cfg.proc)

    def load_rules(self) -> None:
        """Detection rules and alert outputs (agent/detect/stage.py); errors stop start-up."""
        from moray.agent.detect.stage import DetectStage, DetectStageError

        try:
            self.detector = DetectStage.from_config(self.cfg, self.tree)
        except DetectStageError as err:
            raise AgentError(str(err)) from err
        if self.detector is not None:
            self._teardowns.append(("close_alert_outputs", self.detector.close))

    def load_export(self) -> None:
        """Export filters and the OTLP exporter (docs/export.md): an invalid filter or
        endpoint, or --otlp-endpoint without the otlp extra, stops start-up here."""
        from moray.agent.output.filters import ExportFilter
        from moray.agent.output.metrics import ExportCollector

        cfg = self.cfg
        state = getattr(getattr(self.detector, "detector", None), "state", None)
        if state is None:
            from moray.agent.detect.state import State

            state = State(self.tree, cfg.proc)
        try:
            flt = ExportFilter(cfg.export_allow, cfg.export_deny, state)
        except ConfigError as err:
            raise AgentError(str(err)) from err
        self.export_filter = flt if flt else None
        if cfg.otlp_endpoint:
            from prometheus_client import REGISTRY

            from moray.agent.output.otlp import OtlpExport, settings_from

            try:
                self.otlp = OtlpExport(settings_from(
                    cfg.otlp_endpoint, cfg.otlp_protocol, cfg.otlp_headers, cfg.otlp_insecure,
                    cfg.otlp_metrics_interval, cfg.otlp_body), cfg.node, REGISTRY)
            except ConfigError as err:
                raise AgentError(str(err)) from err
            self.otlp.start()
            self._teardowns.append(("close_otlp", self.otlp.close))
        if self.export_filter is None and self.otlp is None:
            return
        from prometheus_client import REGISTRY

        collector = ExportCollector(self.export_filter, self.otlp)
        REGISTRY.register(collector)
        self._teardowns.append(("unregister_export_metrics",
                                lambda: REGISTRY.unregister(collector)))

    def adopt_pins(self) -> None:
        """Open what a previous agent pinned (agent/bpf/pins.py), so load_bpf reuses it."""
        if self.cfg.pin_root is None:
            return
        from moray.agent.bpf.pins import Pins, build_id

        self.pins = Pins(self.cfg.pin_root)
        self.pins.adopt(build_id(object_path("moray.bpf.o")))
        self._teardowns.append(("close_pins", self.pins.close))

    def apply_policies(self) -> None:
        """Publish the policy directory and keep it applied (agent/policy/engine.py)."""
        assert self.obj is not None
        from moray.agent.enrich.containers import ContainerResolver
        from moray.agent.policy.apply import MAP_NAMES, Applier
        from moray.agent.policy.engine import PolicyEngine

        applier = Applier({n: self.obj.map(n) for n in (*MAP_NAMES, "mr_pino", "mr_pagent")},
                          hooks=self.hooks.set if self.hooks is not None else None)
        cg = self.features.cgroup_v2 if self.features else None
        # the pipeline's resolver (it also sees the kernel's cgroup mkdir/rmdir records);
        # a private one only when container identity is off for events
        resolver = self.resolver or ContainerResolver.for_host(self.cfg.proc,
                                                               self.cfg.host_root, cg)
        tiers = {k: str(v) for k, v in self.features.tiers().items()} if self.features else {}
        slots = self._slot_history()
        # a decision on a held exec enters the pipeline typed (agent/events/types.py
        # Decision), queued behind the kernel records already read
        self.policy = PolicyEngine(applier, resolver, self.cfg.policy_dir,
                                   emit=lambda d: self.queue.put((d,)), tiers=tiers,
                                   proc=self.cfg.proc, status_file=self.cfg.policy_status,
                                   slots=slots, guard_journal=self._guard_journal(),
                                   hooks=self.hooks.attached if self.hooks else None)
        self.policy.start()
        if self.cfg.pin_root is not None:
            # decides held tasks if this agent dies and none comes back (agent/policy/guard.py)
            from moray.agent.policy.guard import ensure_running

            pid = ensure_running(self.cfg.pin_root, self.cfg.proc)
            if pid:
                log.info("guard started", extra={"pid": pid, "pin_root": self.cfg.pin_root})
        self._teardowns.append(("stop_policy", self.policy.stop))
        if self.pins is not None:
            self.pins.retire()

    def _guard_journal(self) -> str | None:
        from moray.agent.policy.guard import journal_path

        return journal_path(self.cfg.pin_root) if self.cfg.pin_root is not None else None

    def _slot_history(self) -> Any:
        """The slot table that outlives the agent with the pins (names of records made
        while it was down), keyed to the pinned mr_pconf map it describes."""
        from moray.agent.bpf.pins import map_id
        from moray.agent.policy.slots import SlotHistory, default_path

        assert self.obj is not None
        if self.cfg.pin_root is None:
            return SlotHistory()
        path = self.cfg.slot_table or default_path(self.cfg.pin_root)
        return SlotHistory(path, f"mr_pconf#{map_id(self.obj.map('mr_pconf').fd)}")

    def connect_control_plane(self) -> None:
        """Enrol (first start) and stream: pushed policies, verified, go through the policy
        directory the engine watches; the pipeline's router (start_pipeline) spools every
        event and alert for the server through this client."""
        if not self.cfg.server:
            return
        from moray.agent.controlplane import ControlPlaneClient
        from moray.agent.controlplane.policydir import PolicyDirSink

        ca_pem = None
        if self.cfg.ca_file:
            try:
                with open(self.cfg.ca_file, "rb") as f:
                    ca_pem = f.read()
            except OSError as err:
                raise AgentError(f"cannot read --ca {self.cfg.ca_file}: {err.strerror}") from err
        client = ControlPlaneClient(
            self.cfg.server, self.cfg.cp_data_dir,
            PolicyDirSink(self.cfg.policy_dir, self.cfg.policy_status),
            token=self.cfg.enroll_token, ca_pem=ca_pem, ca_sha256=self.cfg.ca_sha256,
            enroll_server=self.cfg.enroll_server,
            labels=dict(self.cfg.labels), hostname=self.cfg.node, status=self.cp_status)
        client.start()
        self.cp_client = client
        self._teardowns.append(("stop_control_plane", client.stop))
        log.info("control plane: %s (events spooled under %s)", self.cfg.server,
                 self.cfg.cp_data_dir)

    def cp_status(self) -> dict[str, Any]:
        """Heartbeat status: kernel, features, tiers, loss counters."""
        f = self.features
        drops = {"queue": self.queue.dropped, "decode": self.stats.decode_errors}
        if self.obj is not None:
            try:
                drops["ringbuf"] = sum(self.kernel_counters()["rb_drop"])
            except OSError as err:
                log.debug("kernel counters unreadable for the heartbeat: %s", err)
        return {
            "kernel": os.uname().release,
            "features": {k: v.ok for k, v in f.hooks.items()} if f else {},
            "tiers": {k: str(v) for k, v in f.tiers().items()} if f else {},
            "drops": drops,
        }

    def start_enrich(self) -> None:
        if not self.cfg.containers:
            return
        from moray.agent.enrich.containers import ContainerResolver

        cg = self.features.cgroup_v2 if self.features else None
        # a runtime writes its state a few ms after the cgroup appears: re-read it often
        # while a new cgroup is young, so a short-lived container's events are attributed
        self.resolver = ContainerResolver.for_host(self.cfg.proc, self.cfg.host_root, cg,
                                                   retry_interval=0.002)
        self.resolver.start_watch()
        self._teardowns.append(("stop_runtime_watch", self.resolver.stop_watch))

    def kernel_counters(self) -> dict[str, list[int]]:
        """mr_stats per CPU: rb_drop, events, path_trunc, dircache_hit, dircache_miss, and
        lost:<type> (ring buffer full, per record type)."""
        if self.obj is None:  # a scrape before load_bpf
            return {}
        m = self.obj.map("mr_stats")
        out = {}
        names = [("rb_drop", int(Stat.RB_DROP)), ("events", int(Stat.EVENTS)),
                 ("path_trunc", int(Stat.PATH_TRUNC)),
                 ("dircache_hit", int(Stat.DIRCACHE_HIT)),
                 ("dircache_miss", int(Stat.DIRCACHE_MISS)),
                 ("agg_counted", int(Stat.AGG)), ("agg_full", int(Stat.AGG_FULL)),
                 ("agg_retry", int(Stat.AGG_RETRY)), ("agg_race", int(Stat.AGG_RACE))]
        names += [(f"lost:{t}", int(Stat.DROP_BASE) + op) for op, t in TYPE_OF_OP.items()
                  if int(Stat.DROP_BASE) + op < int(Stat.MAX)]
        for name, idx in names:
            out[name] = [int.from_bytes(v, "little") for v in m.lookup_percpu(
                idx.to_bytes(4, "little"))]
        return out

    def lost_totals(self) -> dict[tuple[str, str], int]:
        """(type, where) -> records lost since start: the kernel's ring, the queue."""
        out: dict[tuple[str, str], int] = {
            (t, "queue"): n for t, n in self.queue.dropped_by_type.items() if n}
        for name, per_cpu in self.kernel_counters().items():
            n = sum(per_cpu)
            if name.startswith("lost:") and n > 0:
                out[(name[5:], "ring")] = n
        return out

    def start_metrics(self) -> None:
        """/metrics, /healthz, /readyz (agent/output/health.py), early: a probe sees the
        start-up's progress, and a taken port stops the agent before anything is loaded.
        Without the port (--metrics-port 0) the collector is still registered for OTLP's
        metrics export (--otlp-endpoint), which reads the same registry."""
        if self.cfg.metrics_port is None and not self.cfg.otlp_endpoint:
            return
        from prometheus_client import REGISTRY

        collector = AgentCollector(
            self.stats, lambda: self.queue.dropped, self.queue.depth, lambda: len(self.tree),
            self.kernel_counters,
            tiers=lambda: {k: str(v) for k, v in self.features.tiers().items()}
            if self.features else {},
            spool=lambda: self.cp_client.spool.stats() if self.cp_client else None,
            queue_capacity=self.queue.max_records,
            queue_drops_by_type=lambda: dict(self.queue.dropped_by_type))
        if self.cfg.metrics_port is not None:
            try:
                self.http = HealthServer(self.health, self.cfg.metrics_port,
                                         self.cfg.metrics_addr)
            except OSError as err:
                raise AgentError(f"cannot serve metrics on {self.cfg.metrics_addr}:"
                                 f"{self.cfg.metrics_port}: {err.strerror}") from err
        REGISTRY.register(collector)

        def stop_metrics() -> None:
            REGISTRY.unregister(collector)
            if self.http is not None:
                self.http.close()

        self._teardowns.append(("stop_metrics", stop_metrics))

    def start_pipeline(self) -> None:
        """The pipeline thread (agent/pipeline) on the reader's queue; its teardown stops
        the reader first, so the pipeline drains what was read before it ends."""
        assert self.sink is not None
        # the one exit: events and alerts to the JSON sink, alerts to the SIEM outputs,
        # both to the control plane's spool when enrolled
        router = Router(self.sink, self.detector.outputs if self.detector is not None else (),
                        self.cp_client, alert_format=self.cfg.alert_format,
                        host_root=self.cfg.host_root,
                        keep=self.export_filter.keep if self.export_filter else None,
                        exports=(self.otlp,) if self.otlp is not None else ())
        pipeline = Pipeline(self.tree, router, Formatter(self.cfg.node), self.resolver,
                            self.stats,
                            detect=self.detector.process if self.detector is not None else None,
                            fast_open=self.cfg.fast_open)
        if self.cfg.fast_open:
            from moray.agent.pipeline import fastopen

            log.info("open events: %s", "the Python path (an export or an export filter "
                     "needs them as objects)" if pipeline.open_lines is None
                     else "the compiled path" if fastopen.FAST
                     else "the fast path in Python (moray.agent._fast not built)")
        if self.policy is not None:  # enforcement events are explained by the format stage
            pipeline.format.explain_with(self.policy, self.policy.tiers)
            from moray.agent.policy.residue import Residue

            pipeline.format.repair_with(Residue(self.cfg.proc))
        self.pipeline = pipeline
        worker = threading.Thread(target=pipeline.run, args=(self.queue, self.stop_event),
                                  name="moray-pipeline", daemon=True)
        worker.start()
        self.health.watch_thread("pipeline", worker)

        reporter = LossReporter(self.lost_totals, self.cfg.node,
                                interval=self.cfg.loss_report_interval)

        def report_losses() -> None:
            while not self.stop_event.wait(1.0):
                try:
                    ev = reporter.check()
                except OSError as err:
                    log.warning("cannot read loss counters: %s", err)
                    continue
                if ev is not None:
                    self.queue.put_control((LossReport(ev),))

        losses = threading.Thread(target=report_losses, name="moray-losses", daemon=True)
        losses.start()
        sweeper = sweeping = None
        if self.cfg.aggregate and self.obj is not None:
            from moray.agent.events.aggregate import Sweeper

            sweeper = self.sweeper = Sweeper(self.obj, self.cfg.proc)
            sweeping = threading.Thread(target=sweeper.run, args=(self.stop_event,),
                                        name="moray-aggregate", daemon=True)
            sweeping.start()

        def stop_pipeline() -> None:
            self.stop_event.set()
            losses.join(5)
            if sweeper is not None and sweeping is not None:
                sweeping.join(5)
                sweeper.stop()  # every pending count, before the reader's last read
            if self.reader is not None:
                self.reader.stop()
                self.reader.join(5)
            self.queue.close()
            worker.join(30)

        self._teardowns.append(("stop_pipeline", stop_pipeline))

    # --- run --------------------------------------------------------------------------

    def start(self) -> None:
        """Run the steps in order, one log line each with its duration, and the total."""
        t_start = time.monotonic()
        for name, step in self.steps:
            self.health.step(name)
            sdnotify.status(f"starting: {name}")
            t0 = time.monotonic()
            try:
                step()
            except AgentError:
                raise
            except Exception as err:
                raise AgentError(f"start-up step {name} failed: {err}") from err
            if name in TRIM_AFTER:
                trim()
            rss, hwm = memory_mb()
            log.info("start-up step %s: %d ms, RSS %.1f MB, peak %.1f MB", name,
                     round((time.monotonic() - t0) * 1000), rss, hwm,
                     extra={"step": name, "rss_mb": rss, "peak_rss_mb": hwm})
        total = round((time.monotonic() - t_start) * 1000)
        self.health.ready()  # /readyz 200 and READY=1 together
        sdnotify.ready(f"running: BPF attached, policies applied (start-up {total} ms)")
        log.info("start-up done: %d ms, ready", total, extra={"startup_ms": total})

    def run(self) -> int:
        """Start, process events until stopped, tear down. Returns an exit status."""
        if self.sink is None:
            self.sink = JsonLines(self.cfg.output)
        self._teardowns.append(("close_output", self.sink.close))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (tests)
                signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            self.start()
            log.info("moray-agent running (node %s)", self.cfg.node)
            deadline = (time.monotonic() + self.cfg.duration) if self.cfg.duration else None
            watchdog = sdnotify.watchdog_enabled()
            while not self.stop_event.wait(0.5):
                self.health.beat()
                # systemd's watchdog (WatchdogSec=) hears what /healthz says
                if watchdog and self.health.healthz()[0] == 200:
                    sdnotify.notify("WATCHDOG=1")
                if deadline is not None and time.monotonic() >= deadline:
                    break
            self.stop_event.set()
            return 0
        finally:
            self.health.stopping()
            pinned = ": enforcement stays pinned" if self.cfg.pin_root else ""
            sdnotify.stopping(f"stopping{pinned}")
            self.teardown()

    def teardown(self) -> None:
        while self._teardowns:
            name, fn = self._teardowns.pop()
            try:
                fn()
            except Exception:  # teardown must finish: log and continue with the next
                log.exception("teardown step %s failed", name)


def watch_key(path: str) -> bytes:  # re-exported for tests
    return watch.key(path)


__all__ = ["Agent", "AgentError", "Config", "abi", "watch_key"]
