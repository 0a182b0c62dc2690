"""The agent's policy loop: policy directory -> slots -> compile -> publish; new cgroups
classified; tasks held at their first exec decided; enforcement events explained.

State it owns, and what changes it:

* ``active``: policy name -> (slot, Policy). Changed by :meth:`reload` when the policy
  directory's contents change (checked every ``poll`` seconds). An unchanged policy
  (same digest) keeps its slot; a new or changed one gets a free slot, so old and new
  versions are both complete in the maps around the publishing write (apply.py). Invalid
  files change nothing (their previous version stays if it was valid).
* ``containers``: cgroup id -> container, for every container cgroup in mr_pscope. Filled
  at start from mr_pscope (a restarted agent re-resolves what the kernel already knows),
  then by :meth:`classify_pending` as mr_ppend rows appear (kernel cgroup mkdir), and
  pruned when the kernel removed the row (rmdir).
* held tasks (mr_phold): decided by :meth:`decide_held` once their cgroup is classified:
  SIGKILL when an enforcing policy in scope denies the exec, else SIGCONT.

Runs on its own thread; it is the only writer of the policy maps while the agent runs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from moray.agent.bpf import abi
from moray.agent.enrich.proctree import stat_start_ticks, ticks
from moray.agent.events.types import EnforceEvent
from moray.agent.policy.apply import Applier, dec_conf, u32, u64
from moray.agent.policy.compile import CompileError, compile_policies
from moray.agent.policy.scope import ContainerLike, slots_for
from moray.api.policy.load import load_dir
from moray.api.policy.model import Access, Mode, Policy
from moray.api.policy.syscalls import X86_64

log = logging.getLogger(__name__)

DEFAULT_POLICY_DIR = "/etc/moray/policies"
DEFAULT_STATUS = "/run/moray/policy-status.json"
HOST_AFTER_NS = 3_000_000_000     # a pending cgroup no runtime claims is a host cgroup
HELD_HOST_AFTER_NS = 1_000_000_000  # ... and one with a task held at its first exec
IMAGE_WAIT_NS = 2_000_000_000     # how long a held task waits for the image name
MAX_HOLD_NS = 10_000_000_000      # a hold is decided by then, classified or not

_SYSCALL_NAMES = {v: k for k, v in X86_64.items()}
_KINDS = {abi.EKind.EXEC: "exec", abi.EKind.DRIFT: "drift", abi.EKind.FILE: "file",
          abi.EKind.NET: "network", abi.EKind.SYSCALL: "syscall"}
_ACTIONS = {abi.EAction.BLOCKED: "blocked", abi.EAction.KILLED: "killed",
            abi.EAction.WOULD_BLOCK: "would-block", abi.EAction.HELD: "held"}
_PPEND = abi.PPEND.compile()
_PHOLD = abi.PHOLD.compile()
_U64 = struct.Struct("<Q")
_ENF = abi.ENFORCE.compile()


class Resolver(Protocol):
    def lookup(self, cgroup_id: int, pid: int | None = None) -> Any: ...


def boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class Held:
    pid: int
    cgroup_id: int
    start_ns: int
    exec_deny: int
    drift: int
    ts: int


class PolicyEngine:
    def __init__(self, applier: Applier, resolver: Resolver, policy_dir: str,
                 *, emit: Callable[[bytes], object] | None = None,
                 tiers: dict[str, str] | None = None,
                 proc: str = "/proc", status_file: str | None = DEFAULT_STATUS,
                 poll: float = 0.5, tick: float = 0.01) -> None:
        self.applier = applier
        self.resolver = resolver
        self.policy_dir = policy_dir
        self.emit = emit
        self.tiers = tiers or {}
        self.proc = proc
        self.status_file = status_file
        self.poll = poll
        self.tick_s = tick
        self.active: dict[str, tuple[int, Policy]] = {}
        self.by_slot: dict[int, Policy] = {}      # also slots just replaced: names in events
        self.containers: dict[int, ContainerLike] = {}
        self.errors: list[str] = []
        self.generation = 0
        self._dir_sig: tuple[tuple[str, int, int], ...] | None = None
        self._next_poll = 0.0
        self._held_paths: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.decisions = {"killed": 0, "continued": 0}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.heartbeat()
        self.sync_from_kernel()
        self.reload(force=True)
        self.classify_pending()
        self.decide_held()
        self._thread = threading.Thread(target=self._run, name="moray-policy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop; the kernel stops holding new first execs (heartbeat 0).
        A task held right now is decided at the next start (or `unload` continues it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.applier.heartbeat(0)

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(self.tick_s):
            try:
                now = time.monotonic()
                if now - last_beat >= 0.25:
                    self.heartbeat()
                    last_beat = now
                if now >= self._next_poll:
                    self._next_poll = now + self.poll
                    self.reload()
                self.classify_pending()
                self.decide_held()
            except (OSError, ValueError, KeyError, CompileError) as err:
                # the loop must go on: the kernel keeps enforcing the last published state
                log.exception("policy loop error: %s", err)

    def heartbeat(self) -> None:
        self.applier.heartbeat(boot_ns())

    # ------------------------------------------------------------------ policies

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        d = Path(self.policy_dir)
        if not d.is_dir():
            return ()
        out = []
        for p in sorted(d.iterdir()):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self, force: bool = False) -> bool:
        """Re-read the policy directory; publish when the set changed."""
        sig = self._signature()
        if not force and sig == self._dir_sig:
            return False
        self._dir_sig = sig
        policies, errors = load_dir(self.policy_dir)
        self.errors = [str(e) for e in errors]
        for e in errors:
            log.error("invalid policy (ignored, previous version kept): %s", e)
        by_name = {p.name: p for p in policies}
        for err in errors:  # keep the last good version of a policy whose file broke
            for prob in err.problems:
                for name, (_slot, old) in self.active.items():
                    if old.source == prob.file and name not in by_name:
                        by_name[name] = old
        return self.apply(list(by_name.values()), force=force)

    def apply(self, policies: list[Policy], force: bool = False) -> bool:
        live, _gen, _idx = self.applier.live()
        new: dict[str, tuple[int, Policy]] = {}
        used = live.active
        for p in policies:
            cur = self.active.get(p.name)
            if cur is not None and cur[1].digest == p.digest and (live.active >> cur[0]) & 1:
                new[p.name] = cur
        taken = {s for s, _ in new.values()}
        for p in sorted(policies, key=lambda x: x.name):
            if p.name in new:
                continue
            slot = next((s for s in range(abi.POL_MAX)
                         if s not in taken and not (used >> s) & 1), None)
            if slot is None:
                raise CompileError(f"no free policy slot for {p.name} "
                                   f"({abi.POL_MAX} slots, replacement needs a spare)")
            taken.add(slot)
            new[p.name] = (slot, p)
        if not force and {k: v[0] for k, v in new.items()} == {
                k: v[0] for k, v in self.active.items()} and live.active == self._mask(new):
            return False
        slotted = sorted(new.values(), key=lambda t: t[0])
        compiled = compile_policies(slotted)
        scope = {cg: slots_for(c, slotted) for cg, c in self.containers.items()}
        with self._lock:
            for s, p in slotted:
                self.by_slot[s] = p
        self.applier.publish(compiled, scope)
        self.active = new
        self.generation += 1
        # the status file first: "policies applied" in the log then means the file says so
        self._write_status()
        log.info("policies applied", extra={"policies": {n: s for n, (s, _) in new.items()}})
        return True

    @staticmethod
    def _mask(active: dict[str, tuple[int, Policy]]) -> int:
        m = 0
        for s, _ in active.values():
            m |= 1 << s
        return m

    def _write_status(self) -> None:
        if not self.status_file:
            return
        doc = {"generation": self.generation, "time": time.time(), "errors": self.errors,
               "policies": [{"name": p.name, "slot": s, "mode": str(p.mode),
                             "source": p.source, "rules": p.rule_count(),
                             "digest": p.digest[:12]}
                            for s, p in sorted(self.active.values(), key=lambda t: t[0])],
               "containers": len(self.containers), "tiers": self.tiers}
        try:
            os.makedirs(os.path.dirname(self.status_file), exist_ok=True)
            tmp = self.status_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=2)
            os.replace(tmp, self.status_file)
        except OSError as err:
            log.warning("cannot write policy status %s: %s", self.status_file, err)

    # ------------------------------------------------------------------ scope

    def sync_from_kernel(self) -> None:
        """Containers the kernel already has scope rows for (an agent restart)."""
        for cg in self.applier.read_scope():
            c = self.resolver.lookup(cg, None)
            if c is not None:
                self.containers[cg] = c

    def _slotted(self) -> list[tuple[int, Policy]]:
        return sorted(self.active.values(), key=lambda t: t[0])

    def _needs_image(self) -> bool:
        return any(p.scope.containers is not None and p.scope.containers.images
                   for _s, p in self.active.values())

    def classify_pending(self) -> int:
        """mr_ppend rows -> mr_pscope (containers) or nothing (host). Returns how many."""
        pend = self.applier.maps["mr_ppend"]
        keys = list(pend.keys())
        if not keys:
            return 0
        held_pids: dict[int, int] = {}
        for h in self._held():
            held_pids.setdefault(h.cgroup_id, h.pid)
        now = boot_ns()
        done = 0
        for kb in keys:
            cg = _U64.unpack(kb)[0]
            raw = pend.lookup(kb)
            if raw is None:
                continue
            _mask, ts = _PPEND.unpack(raw)
            age = now - ts
            pid = held_pids.get(cg)
            if pid is None and age < HOST_AFTER_NS:
                continue  # nothing ran there yet: no hurry, and the runtime may still write
            c = self.resolver.lookup(cg, pid)
            if c is not None:
                if c.image is None and age < IMAGE_WAIT_NS and self._needs_image():
                    continue  # the runtime has not written the image yet
                self.containers[cg] = c
                self.applier.set_scope(cg, slots_for(c, self._slotted()))
                log.info("container classified", extra={
                    "cgroup_id": cg, "container": c.id, "image": c.image})
            elif age < HELD_HOST_AFTER_NS:
                continue  # a held task: its runtime's state may lag its first exec a little
            else:
                log.info("pending cgroup is a host cgroup", extra={"cgroup_id": cg})
            pend.delete(kb)
            done += 1
        return done

    # ------------------------------------------------------------------ held tasks

    def _held(self) -> list[Held]:
        m = self.applier.maps["mr_phold"]
        out = []
        for kb in list(m.keys()):
            raw = m.lookup(kb)
            if raw is not None:
                out.append(Held(struct.unpack("<I", kb)[0], *_PHOLD.unpack(raw)))
        return out

    def decide_held(self) -> int:
        held = self._held()
        if not held:
            return 0
        conf_raw = self.applier.live()
        conf = conf_raw[0]
        scope_map = self.applier.maps["mr_pscope"]
        pend = self.applier.maps["mr_ppend"]
        now = boot_ns()
        n = 0
        for h in held:
            key = u64(h.cgroup_id)
            row = scope_map.lookup(key)
            pending = pend.lookup(key)
            if row is None and pending is not None and self._runtime_bootstrap(h):
                # runc's init re-exec'ing its memfd copy after runc moved it into the new
                # cgroup (a slow or loaded machine: seen under qemu TCG): runc writes the
                # state that classifies the cgroup only once it runs on. The cgroup stays
                # pending, so the container's first exec of its own is held in turn.
                self.applier.maps["mr_phold"].delete(struct.pack("<I", h.pid))
                log.info("held runtime bootstrap continued", extra={
                    "pid": h.pid, "cgroup_id": h.cgroup_id})
                if self._same_process(h):
                    os.kill(h.pid, signal.SIGCONT)
                continue
            if row is None and pending is not None and now - h.ts < MAX_HOLD_NS:
                continue
            if row is not None:
                mask = _U64.unpack(row)[0]
            elif pending is not None:
                mask = _PPEND.unpack(pending)[0]
            else:
                mask = conf.host
            hit = (h.exec_deny | h.drift) & mask & conf.active
            enforced = hit & conf.enforce
            log.info("held task decided", extra={
                "pid": h.pid, "cgroup_id": h.cgroup_id, "held_ms": (now - h.ts) // 1_000_000,
                "scope": "container" if row is not None else
                         "pending" if pending is not None else "host",
                "verdict": "kill" if enforced else "continue"})
            self._release(h, hit, enforced)
            self.applier.maps["mr_phold"].delete(struct.pack("<I", h.pid))
            n += 1
        return n

    def _release(self, h: Held, hit: int, enforced: int) -> None:
        if not self._same_process(h):
            log.warning("held task gone or pid reused", extra={"pid": h.pid})
            return
        kind = abi.EKind.EXEC if h.exec_deny & hit else abi.EKind.DRIFT
        if enforced:
            # the record goes first: it is then queued before the kernel's exit / rmdir
            self._emit(h, kind, abi.EAction.KILLED, hit, enforced)
            os.kill(h.pid, signal.SIGKILL)
            self.decisions["killed"] += 1
            return
        if hit:
            self._emit(h, kind, abi.EAction.WOULD_BLOCK, hit, 0)
        os.kill(h.pid, signal.SIGCONT)
        self.decisions["continued"] += 1

    def _runtime_bootstrap(self, h: Held) -> bool:
        """The held task is runc's init (`runc init`, or its cloned binary
        /memfd:runc_cloned:...) whose parent is runc or runc's init."""
        try:
            exe = os.readlink(f"{self.proc}/{h.pid}/exe")
            with open(f"{self.proc}/{h.pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"{self.proc}/{h.pid}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            parent = os.readlink(f"{self.proc}/{ppid}/exe")
        except (OSError, ValueError, IndexError):
            return False
        runc_init = argv[:2] == [b"runc", b"init"] or exe.startswith("/memfd:runc_cloned")
        return runc_init and (os.path.basename(parent).startswith("runc")
                              or parent.startswith("/memfd:runc_cloned"))

    def _same_process(self, h: Held) -> bool:
        return stat_start_ticks(self.proc, h.pid) == ticks(h.start_ns)

    def _paths_of(self, pid: int) -> tuple[str, str]:
        with self._lock:
            known = self._held_paths.pop(pid, None)
        if known is not None:
            return known
        try:
            exe = os.readlink(f"{self.proc}/{pid}/exe")
            root = os.readlink(f"{self.proc}/{pid}/root")
        except OSError:
            return "", ""
        if root != "/" and exe.startswith(root + "/"):
            exe = exe[len(root):]
        return exe, ""

    def _emit(self, h: Held, kind: int, action: int, hit: int, enforced: int) -> None:
        if self.emit is None:
            return
        path, path2 = self._paths_of(h.pid)
        p1, p2 = path.encode()[:4095], path2.encode()[:255]
        comm = b""
        ids = [0, 0, 0]
        ppid = 0
        try:
            comm = Path(f"{self.proc}/{h.pid}/comm").read_bytes().strip()[:15]
            for line in Path(f"{self.proc}/{h.pid}/status").read_text().splitlines():
                if line.startswith("PPid:"):
                    ppid = int(line.split()[1])
                elif line.startswith("Uid:"):
                    ids[0], ids[1] = int(line.split()[1]), int(line.split()[2])
                elif line.startswith("Gid:"):
                    ids[2] = int(line.split()[1])
        except OSError:
            pass  # killed meanwhile: the record still names the pid and the policy
        size = _ENF.size + len(p1) + len(p2)
        rec = _ENF.pack(abi.Op.ENFORCE, size, 0, boot_ns(),
                        h.pid, h.pid, ppid, ids[0], ids[1], ids[2], 0, h.cgroup_id, h.start_ns,
                        0, comm, hit, enforced, kind, action, 0, 0, 0, len(p1), len(p2),
                        bytes(16)) + p1 + p2
        self.emit(rec)

    # ------------------------------------------------------------------ explaining events

    def explain(self, ev: EnforceEvent) -> dict[str, Any]:
        """The `enforcement` object of an event: what was done, by which policy and rule."""
        if ev.action == abi.EAction.HELD:
            with self._lock:
                self._held_paths[ev.proc.pid] = (ev.path, ev.path2)
                if len(self._held_paths) > 4096:
                    self._held_paths.pop(next(iter(self._held_paths)))
        with self._lock:
            slots = dict(self.by_slot)
        kind = _KINDS.get(abi.EKind(ev.kind), str(ev.kind)) if ev.kind in _KINDS else str(
            ev.kind)
        action = _ACTIONS.get(abi.EAction(ev.action), str(ev.action)) if ev.action in \
            _ACTIONS else str(ev.action)
        matched = []
        for s in range(abi.POL_MAX):
            if not (ev.policies >> s) & 1:
                continue
            p = slots.get(s)
            matched.append({
                "name": p.name if p else f"slot-{s}",
                "mode": str(p.mode) if p else None,
                "enforced": bool((ev.enforced >> s) & 1),
                "rule": rule_of(p, ev) if p else None,
            })
        first = next((m for m in matched if m["enforced"]), matched[0] if matched else None)
        out: dict[str, Any] = {
            "action": action, "kind": kind,
            "tier": self._tier(ev),
            "policy": first["name"] if first else None,
            "rule": first["rule"] if first else None,
            "policies": matched,
        }
        note = _note(ev)
        if note:
            out["note"] = note
        if ev.kind in (abi.EKind.EXEC, abi.EKind.DRIFT):
            out["binary"] = ev.path
            if ev.path2:
                out["filename"] = ev.path2
        elif ev.kind == abi.EKind.FILE:
            out["path"] = ev.path
            out["access"] = {1: "read", 2: "write", 3: "read-write"}.get(ev.arg & 3, "?")
        elif ev.kind == abi.EKind.NET:
            out["daddr"] = ev.daddr
            out["dport"] = ev.dport
            out["protocol"] = {6: "tcp", 17: "udp"}.get(ev.arg, str(ev.arg))
        elif ev.kind == abi.EKind.SYSCALL:
            out["syscall"] = _SYSCALL_NAMES.get(ev.arg, str(ev.arg))
            out["nr"] = ev.arg
        return out

    def _tier(self, ev: EnforceEvent) -> str | None:
        key = {abi.EKind.EXEC: "exec", abi.EKind.DRIFT: "exec", abi.EKind.FILE: "file",
               abi.EKind.NET: "network", abi.EKind.SYSCALL: "syscall"}.get(
                   abi.EKind(ev.kind)) if ev.kind in _KINDS else None
        return self.tiers.get(key) if key else None


def _note(ev: EnforceEvent) -> str | None:
    if ev.action == abi.EAction.HELD:
        return ("first exec in a container not yet classified: stopped (SIGSTOP) before its "
                "first instruction until its policies were applied")
    if ev.action != abi.EAction.KILLED:
        return None
    if ev.kind == abi.EKind.FILE:
        return ("the open completed; the process was killed (SIGKILL) before it returned to "
                "user space, so nothing was read or written through the descriptor")
    if ev.kind == abi.EKind.SYSCALL:
        return "the syscall ran; the process was killed (SIGKILL) when it returned"
    return "killed (SIGKILL) before the new image's first instruction"


def rule_of(p: Policy, ev: EnforceEvent) -> str | None:
    """The rule of *p* that matches the event's object (user-space attribution of a
    decision the kernel made on masks)."""
    if ev.kind == abi.EKind.DRIFT:
        return "exec.drift: block"
    if ev.kind == abi.EKind.EXEC:
        best = None
        for cand in (ev.path, ev.path2):
            for pat in p.exec.deny:
                if cand and pat.matches(cand) and (best is None or len(pat.path) > len(
                        best.path)):
                    best = pat
        if best is not None:
            return f"exec.deny: {best.text}"
        if p.exec.allow is not None:
            return "exec.allow: not listed"
        return "exec.drift: block" if p.exec.drift else None
    if ev.kind == abi.EKind.FILE:
        acc = ev.arg & 3
        for label, rules in (("files.deny", p.files.deny), ("files.monitor", p.files.monitor)):
            hits = [r for r in rules if r.pattern.matches(ev.path) and (
                r.access is Access.ANY or (r.access is Access.READ and acc & 1)
                or (r.access is Access.WRITE and acc & 2))]
            if hits:
                r = max(hits, key=lambda x: len(x.pattern.path))
                return f"{label}: {r.pattern.text} ({r.access})"
        return None
    if ev.kind == abi.EKind.NET:
        try:
            addr = ipaddress.ip_address(ev.daddr or "")
        except ValueError:
            return None
        for nr in p.network.deny:
            if nr.matches(addr, ev.dport, ev.arg):
                return f"network.egress.deny: {nr.text}"
        if p.network.allow is not None:
            return "network.egress.allow: not listed"
        return None
    if ev.kind == abi.EKind.SYSCALL:
        name = _SYSCALL_NAMES.get(ev.arg)
        return f"syscalls.deny: {name}" if name in p.syscalls.deny else None
    return None


__all__ = ["DEFAULT_POLICY_DIR", "Mode", "PolicyEngine", "dec_conf", "rule_of", "u32"]
