"""Held execs and pending cgroups: classified and decided in user space.

State it reads and writes (the policy maps, agent/policy/apply.py), and what changes it:

* mr_ppend (a cgroup the kernel saw created, not classified yet): :meth:`Holds.classify`
  turns a row into an mr_pscope row (a container: the slots of the policies whose scope
  selects it) or nothing (a host cgroup: no runtime claims it after HOST_AFTER_NS, or
  HELD_HOST_AFTER_NS with a task held in it), then deletes the row. A cgroup where runc's
  init was seen (``runtime_made``) is a container whose state runc has not written yet:
  it stays pending up to MAX_HOLD_NS (a loaded machine: runc's state came > 1 s after the
  container's first exec, which then ran as a host task).
* mr_phold (a task stopped at its first exec in a pending cgroup): :meth:`Holds.decide`
  sends SIGKILL when an enforcing policy in scope denies the exec, else SIGCONT, once the
  cgroup is classified (or MAX_HOLD_NS passed), then deletes the row. A kill, or a
  monitor-mode hit, is reported as a typed `Decision` (agent/events/types.py) handed to
  ``emit`` before the signal: the agent queues it for the pipeline behind the kernel
  records already read, so it comes before the kernel's exit record. Its paths are what
  /proc shows; the pipeline replaces them with the kernel's HELD record's (the binary and
  the filename passed to execve: a deny on /usr/bin/nc, a link to nc.real) when it saw it.
  The row's slot masks are those of the configuration live at the hold; ``translate``
  (PolicyEngine: agent/policy/slots.py) maps them to the slots the same policies hold at
  the decision, so a publish (or an agent restart) between the two changes nothing.
* images (issue 16, spec.images.block): a held task in a classified container is also
  killed when ``image_check`` (the engine: agent/policy/images.py over the image-verdict
  list) says a policy in its scope blocks the container's image; the event names the
  image, the digest and the reasons. Classification waits up to IMAGE_WAIT_NS for the
  runtime to give the image digest when such a policy is live.
* agent down (issue 13, spec.agentDown): a pending cgroup made before this agent started
  (``uncovered_before``), classified as a container, with a task in it and none held
  since before this start (a task held by this agent meanwhile does not count), ran
  without its policies while no agent was there: reported once as an `uncovered`
  decision naming the policies in its scope (those with agentDown: open, or closed ones
  in monitor mode: closed enforcing ones held or refused its first exec).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from moray.agent.bpf import abi
from moray.agent.enrich.proctree import NS_PER_TICK, stat_start_ticks, ticks
from moray.agent.events.types import Decision, EnforceEvent, ImageHit, Proc
from moray.agent.policy.apply import Applier, u64
from moray.agent.policy.scope import ContainerLike, slots_for
from moray.api.policy.model import Policy

log = logging.getLogger(__name__)

HOST_AFTER_NS = 3_000_000_000     # a pending cgroup no runtime claims is a host cgroup
HELD_HOST_AFTER_NS = 1_000_000_000  # ... and one with a task held at its first exec
IMAGE_WAIT_NS = 2_000_000_000     # how long a held task waits for the image name
MAX_HOLD_NS = 10_000_000_000      # a hold is decided by then, classified or not

_PPEND = abi.PPEND.compile()
_PHOLD = abi.PHOLD.compile()
_U64 = struct.Struct("<Q")
PATH_MAX, NAME_MAX = 4095, 255    # the kernel record's path bounds (bpf/lib/abi.h)


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


def _clip(s: str, limit: int) -> str:
    """As the kernel record would carry it: at most `limit` bytes."""
    raw = s.encode()
    return s if len(raw) <= limit else raw[:limit].decode("utf-8", "backslashreplace")


ImageCheck = Callable[[int, int], tuple[int, ImageHit | None]]   # (cgroup, slots) -> hit


class Holds:
    def __init__(self, applier: Applier, resolver: Resolver, *, proc: str = "/proc",
                 emit: Callable[[Decision], object] | None = None,
                 translate: Callable[[int, int], int] | None = None,
                 image_check: ImageCheck | None = None) -> None:
        self.applier = applier
        self.image_check = image_check
        self.resolver = resolver
        self.proc = proc
        self.emit = emit
        self.translate = translate
        self.uncovered_before = 0  # boot ns: pending cgroups older than this ran unwatched
        self.closed_enforcing = 0  # slots with agentDown: closed in enforce mode (engine)
        self.decisions = {"killed": 0, "continued": 0}
        # cgroups where runc's init was held: made by a runtime, a container for sure
        self.runtime_made: dict[int, int] = {}

    # ------------------------------------------------------------------ pending cgroups

    def classify(self, containers: dict[int, ContainerLike],
                 slotted: list[tuple[int, Policy]]) -> int:
        """mr_ppend rows -> mr_pscope (containers, added to ``containers``) or nothing
        (host). Returns how many were classified."""
        pend = self.applier.maps["mr_ppend"]
        keys = list(pend.keys())
        if not keys:
            return 0
        held_pids: dict[int, int] = {}
        held_before: set[int] = set()  # cgroups with a task held before this agent started
        for h in self.held():
            held_pids.setdefault(h.cgroup_id, h.pid)
            if h.ts < self.uncovered_before:
                held_before.add(h.cgroup_id)
        needs_image = any(p.scope.containers is not None and p.scope.containers.images
                          for _s, p in slotted)
        needs_digest = any(p.images.used for _s, p in slotted)
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
            runtime_made = cg in self.runtime_made
            if pid is None and age < (MAX_HOLD_NS if runtime_made else HOST_AFTER_NS):
                continue  # nothing ran there yet: no hurry, and the runtime may still write
            c = self.resolver.lookup(cg, pid)
            if c is not None:
                if age < IMAGE_WAIT_NS and ((needs_image and c.image is None)
                                            or (needs_digest and c.image_digest is None)):
                    continue  # the runtime has not written the image yet
                containers[cg] = c
                self.applier.set_scope(cg, slots_for(c, slotted))
                log.info("container classified", extra={
                    "cgroup_id": cg, "container": c.id, "image": c.image})
                if ts < self.uncovered_before and cg not in held_before:
                    self._uncovered(cg, c, slots_for(c, slotted) & ~self.closed_enforcing)
            elif age < (MAX_HOLD_NS if runtime_made else HELD_HOST_AFTER_NS):
                continue  # a held task: its runtime's state may lag its first exec a little
            elif runtime_made:
                log.warning("runc made this cgroup but wrote no state matching it in time: "
                            "treated as a host cgroup", extra={"cgroup_id": cg})
            else:
                log.info("pending cgroup is a host cgroup", extra={"cgroup_id": cg})
            self.runtime_made.pop(cg, None)
            pend.delete(kb)
            done += 1
        return done

    def _uncovered(self, cg: int, c: ContainerLike, mask: int) -> None:
        """A container that ran while the agent was down: say so, naming its policies."""
        if not mask:
            return
        pid = self._a_pid(c)
        if pid is None:
            return  # nothing ran in it yet: it is covered from its first exec on
        start = stat_start_ticks(self.proc, pid)
        log.warning("container ran without its policies while the agent was down", extra={
            "cgroup_id": cg, "container": c.id, "slots": f"{mask:#x}"})
        self._emit(Held(pid, cg, (start or 0) * NS_PER_TICK, 0, 0, boot_ns()),
                   abi.EKind.EXEC, abi.EAction.UNCOVERED, mask, 0)

    def report_journal(self, path: str) -> int:
        """The guard's decisions while no agent was there (agent/policy/guard.py): each
        refusal becomes a `killed` decision (named by the policies that were closed then,
        at the guard's time); continued tasks are reported when their container is
        classified (`uncovered`). Empties the journal; returns how many were reported."""
        try:
            lines = Path(path).read_text().splitlines()
            os.unlink(path)
        except FileNotFoundError:
            return 0
        n = 0
        for line in lines:
            try:
                e = json.loads(line)
                pid, cg, ts = int(e["pid"]), int(e["cgroup_id"]), int(e["ts"])
            except (ValueError, KeyError, TypeError):
                log.warning("guard journal: bad line skipped", extra={"line": line[:200]})
                continue
            log.info("held task decided by the guard while the agent was down", extra=e)
            if e.get("action") != "killed" or self.emit is None:
                continue
            proc = Proc(pid=pid, tid=pid, ppid=0, uid=0, euid=0, gid=0, mntns=0,
                        cgroup_id=cg, start_ns=int(e.get("start_ns", 0)), pstart_ns=0,
                        comm=str(e.get("comm", ""))[:15])
            slots = int(e.get("slots", 0))
            self.emit(Decision(EnforceEvent(
                ts=ts, proc=proc, kind=abi.EKind.EXEC, action=abi.EAction.KILLED,
                policies=slots, enforced=slots, arg=abi.ARG_AGENT_DOWN, family=0,
                daddr=None, dport=0, path=_clip(str(e.get("exe", "")), PATH_MAX), path2="")))
            n += 1
        return n

    def _a_pid(self, c: ContainerLike) -> int | None:
        """The oldest task of the container's cgroup (cgroup.procs), if any."""
        root = getattr(getattr(self.resolver, "cgroups", None), "cgroup_root", None)
        rel = getattr(c, "cgroup_path", None)
        if not root or not rel:
            return None
        try:
            procs = Path(root, rel.lstrip("/"), "cgroup.procs").read_text().split()
        except OSError:
            return None
        return min((int(p) for p in procs), default=None)

    # ------------------------------------------------------------------ held tasks

    def held(self) -> list[Held]:
        m = self.applier.maps["mr_phold"]
        out = []
        for kb in list(m.keys()):
            raw = m.lookup(kb)
            if raw is not None:
                out.append(Held(struct.unpack("<I", kb)[0], *_PHOLD.unpack(raw)))
        return out

    def decide(self) -> int:
        held = self.held()
        if not held:
            return 0
        conf = self.applier.live()[0]
        scope_map = self.applier.maps["mr_pscope"]
        pend = self.applier.maps["mr_ppend"]
        now = boot_ns()
        n = 0
        for row_h in held:
            h = row_h
            key = u64(h.cgroup_id)
            row = scope_map.lookup(key)
            pending = pend.lookup(key)
            if row is None and pending is not None and self._runtime_bootstrap(h):
                # runc's init re-exec'ing its memfd copy after runc moved it into the new
                # cgroup (a slow or loaded machine: seen under qemu TCG): runc writes the
                # state that classifies the cgroup only once it runs on. The cgroup stays
                # pending, so the container's first exec of its own is held in turn.
                self.applier.maps["mr_phold"].delete(struct.pack("<I", h.pid))
                self.runtime_made[h.cgroup_id] = now
                if len(self.runtime_made) > 4096:   # rows of cgroups gone without a decision
                    self.runtime_made.pop(next(iter(self.runtime_made)))
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
            if self.translate is not None:  # slots at the hold -> slots now
                h = replace(h, exec_deny=self.translate(h.exec_deny, h.ts),
                            drift=self.translate(h.drift, h.ts))
            hit = (h.exec_deny | h.drift) & mask & conf.active
            image = None
            if row is not None and self.image_check is not None:
                image_hit, image = self.image_check(h.cgroup_id, mask & conf.active)
                hit |= image_hit
            enforced = hit & conf.enforce
            log.info("held task decided", extra={
                "pid": h.pid, "cgroup_id": h.cgroup_id, "held_ms": (now - h.ts) // 1_000_000,
                "scope": "container" if row is not None else
                         "pending" if pending is not None else "host",
                "verdict": "kill" if enforced else "continue"})
            self._release(h, hit, enforced, image if hit else None)
            self.applier.maps["mr_phold"].delete(struct.pack("<I", h.pid))
            n += 1
        return n

    def _release(self, h: Held, hit: int, enforced: int, image: ImageHit | None = None
                 ) -> None:
        if not self._same_process(h):
            log.warning("held task gone or pid reused", extra={"pid": h.pid})
            return
        kind = abi.EKind.EXEC if h.exec_deny & hit or image else abi.EKind.DRIFT
        if image is not None:
            log.info("container image blocked" if enforced else "container image would be "
                     "blocked", extra={"pid": h.pid, "cgroup_id": h.cgroup_id,
                                       "image": image.image, "digest": image.digest,
                                       "verdict": image.verdict})
        if enforced:
            # the event goes first: it is then queued before the kernel's exit / rmdir
            self._emit(h, kind, abi.EAction.KILLED, hit, enforced, image=image)
            os.kill(h.pid, signal.SIGKILL)
            self.decisions["killed"] += 1
            return
        if hit:
            self._emit(h, kind, abi.EAction.WOULD_BLOCK, hit, 0, image=image)
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
        """The held task's binary as the task sees it (no filename: /proc has none)."""
        try:
            exe = os.readlink(f"{self.proc}/{pid}/exe")
            root = os.readlink(f"{self.proc}/{pid}/root")
        except OSError:
            return "", ""
        if root != "/" and exe.startswith(root + "/"):
            exe = exe[len(root):]
        return exe, ""

    def _emit(self, h: Held, kind: int, action: int, hit: int, enforced: int,
              arg: int = 0, image: ImageHit | None = None) -> None:
        if self.emit is None:
            return
        path, path2 = self._paths_of(h.pid)
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
            pass  # killed meanwhile: the event still names the pid and the policy
        proc = Proc(pid=h.pid, tid=h.pid, ppid=ppid, uid=ids[0], euid=ids[1], gid=ids[2],
                    mntns=0, cgroup_id=h.cgroup_id, start_ns=h.start_ns, pstart_ns=0,
                    comm=comm.decode("utf-8", "replace"))
        self.emit(Decision(EnforceEvent(
            ts=boot_ns(), proc=proc, kind=kind, action=action, policies=hit,
            enforced=enforced, arg=arg, family=0, daddr=None, dport=0,
            path=_clip(path, PATH_MAX), path2=_clip(path2, NAME_MAX), image=image)))
