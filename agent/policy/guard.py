"""The guard: decides tasks held at their first exec when no agent will.

A task stopped (SIGSTOP) at its first exec in a new cgroup (bpf/progs/enforce_exec.bpf.c,
agent/policy/hold.py) waits for the agent. Nothing in the kernel can end that wait: a BPF
program signals only the task it runs in, and a stopped task runs nothing. If the agent
is gone for good, someone else must. The guard is that someone: a small process the
agent starts beside itself in its own session (so a SIGKILL of the agent leaves it),
one per pin root, which exits when the pin root is removed (`moray-agent unload`).

While the agent's heartbeat (mr_palive) is fresh the guard does nothing. Once it is
stale, every held task (mr_phold) is decided when its bound has passed:

* an active enforcing policy has ``agentDown: closed``: once the agent has been silent
  for mr_pconf.down_hold_ns (the longest agentDownHold), SIGKILL: the exec is refused,
  as the kernel refuses new ones from then on;
* otherwise (``agentDown: open``, the default), or when the task's cgroup inherited slots
  from a classified container (nested: covered by those): once the agent has been silent
  for OPEN_AFTER_NS, SIGCONT: the task runs (uncovered, as open says, or as inherited).

Each decision is appended to the journal (JSON lines, :func:`journal_path`) before the
signal; the next agent reports every line as an `enforce` event with the policy names
(PolicyEngine.report_guard) and empties it. State it owns: the journal and its lock file
(an exclusive flock while it runs: :func:`ensure_running` starts one only if none holds it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moray.agent.bpf import abi

log = logging.getLogger(__name__)

OPEN_AFTER_NS = 5_000_000_000   # open: continue a held task after this much silence
TICK = 0.25                     # seconds between looks
_PHOLD = abi.PHOLD.compile()
_CONF = abi.PCONF.compile()
_PPEND = abi.PPEND.compile()
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _name(pin_root: str) -> str:
    return pin_root.rstrip("/").replace("/", "-")


def journal_path(pin_root: str, state_dir: str = "/run/moray") -> str:
    return os.path.join(state_dir, f"guard{_name(pin_root)}.jsonl")


def lock_path(pin_root: str, state_dir: str = "/run/moray") -> str:
    return os.path.join(state_dir, f"guard{_name(pin_root)}.lock")


def boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard does with one held task now (None: not yet)."""

    action: str   # "killed" | "continued"
    slots: int    # the closed policies that refused it (killed)


def verdict(silent_ns: int, closed_enforcing: int, down_hold_ns: int) -> Verdict | None:
    """The rule above, pure: the agent silent for *silent_ns*."""
    if silent_ns < abi.ALIVE_NS:
        return None
    if closed_enforcing:
        return Verdict("killed", closed_enforcing) if silent_ns >= down_hold_ns else None
    return Verdict("continued", 0) if silent_ns >= OPEN_AFTER_NS else None


class Guard:
    def __init__(self, pin_root: str, *, proc: str = "/proc",
                 state_dir: str = "/run/moray") -> None:
        self.pin_root = pin_root
        self.proc = proc
        self.journal = journal_path(pin_root, state_dir)
        self.lock = lock_path(pin_root, state_dir)

    def _map(self, name: str) -> object:
        from moray.agent.bpf.pins import pinned_map

        return pinned_map(name, self.pin_root)

    def run(self) -> int:
        os.makedirs(os.path.dirname(self.lock), exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another guard watches this pin root
        log.info("guard watching held tasks", extra={"pin_root": self.pin_root})
        while os.path.isdir(self.pin_root):
            try:
                self.tick()
            except OSError as err:  # pins being removed, a task gone: look again
                log.debug("guard tick: %s", err)
            time.sleep(TICK)
        with contextlib.suppress(OSError):
            os.unlink(self.lock)
        os.close(fd)
        return 0

    def tick(self) -> int:
        """Decide what is due; returns how many tasks were decided."""
        from moray.agent.bpf.loader import BpfMap

        maps: dict[str, BpfMap] = {}
        try:
            for name in ("mr_palive", "mr_pgen", "mr_pconf", "mr_phold", "mr_ppend"):
                m = self._map(name)
                if not isinstance(m, BpfMap):
                    return 0
                maps[name] = m
            raw = maps["mr_palive"].lookup(_U32.pack(0))
            beat = _U64.unpack(raw)[0] if raw else 0
            now = boot_ns()
            silent = now - beat if beat else 1 << 62
            if silent < abi.ALIVE_NS:
                return 0
            gen = maps["mr_pgen"].lookup(_U32.pack(0))
            conf_raw = maps["mr_pconf"].lookup(_U32.pack(_U32.unpack(gen)[0] & 1 if gen else 0))
            conf = dict(zip(abi.PCONF.index, _CONF.unpack(conf_raw), strict=True)) \
                if conf_raw else {}
            closed = conf.get("down_closed", 0) & conf.get("active", 0) & conf.get("enforce", 0)
            v = verdict(silent, closed, conf.get("down_hold_ns", 0))
            nested = verdict(silent, 0, 0)  # inherited a container's slots: as open
            if v is None and nested is None:
                return 0
            n = 0
            hold = maps["mr_phold"]
            for key in list(hold.keys()):
                row = hold.lookup(key)
                if row is None:
                    continue
                pid = _U32.unpack(key)[0]
                cg, start_ns, exec_deny, drift, ts = _PHOLD.unpack(row)
                pend = maps["mr_ppend"].lookup(_U64.pack(cg))
                inherited = _PPEND.unpack(pend)[0] & conf.get("active", 0) if pend else 0
                w = nested if inherited else v
                if w is None:
                    continue
                self._decide(pid, cg, start_ns, exec_deny | drift, ts, w, now)
                hold.delete(key)
                n += 1
            return n
        finally:
            for m in maps.values():
                os.close(m.fd)

    def _decide(self, pid: int, cg: int, start_ns: int, deny: int, held_ts: int,
                v: Verdict, now: int) -> None:
        from moray.agent.enrich.proctree import stat_start_ticks, ticks

        if stat_start_ticks(self.proc, pid) != ticks(start_ns):
            return  # gone, or the pid was reused: nothing to signal
        entry = {"pid": pid, "cgroup_id": cg, "start_ns": start_ns, "held_ts": held_ts,
                 "ts": now, "action": v.action, "slots": v.slots, "deny": deny}
        with contextlib.suppress(OSError):
            entry["comm"] = Path(f"{self.proc}/{pid}/comm").read_text().strip()
            entry["exe"] = os.readlink(f"{self.proc}/{pid}/exe")
            root = os.readlink(f"{self.proc}/{pid}/root")
            if root != "/" and str(entry["exe"]).startswith(root + "/"):
                entry["exe"] = str(entry["exe"])[len(root):]
        with open(self.journal, "a") as f:  # journal first: the report survives the signal
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.kill(pid, signal.SIGKILL if v.action == "killed" else signal.SIGCONT)
        log.info("guard decided a held task", extra=entry)


def running(pin_root: str, state_dir: str = "/run/moray") -> bool:
    """Whether a guard holds the lock of *pin_root*."""
    path = lock_path(pin_root, state_dir)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def ensure_running(pin_root: str, proc: str = "/proc") -> int | None:
    """Start a guard for *pin_root* unless one runs; returns its pid if started."""
    if running(pin_root):
        return None
    p = subprocess.Popen([sys.executable, "-m", "moray.agent.cli", "guard",
                          "--pin-root", pin_root, "--proc", proc],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return p.pid
