"""The agent's policy loop: policy directory -> slots -> compile -> publish; the status
file; the loop that classifies new cgroups and decides held execs (agent/policy/hold.py).

State it owns, and what changes it:

* ``active``: policy name -> (slot, Policy). Changed by :meth:`reload` when the policy
  directory's contents change (checked every ``poll`` seconds). An unchanged policy
  (same digest) keeps its slot; a new or changed one gets a free slot, so old and new
  versions are both complete in the maps around the publishing write (apply.py). Invalid
  files change nothing (their previous version stays if it was valid).
* ``slots``: per slot, which policy it held since when (agent/policy/slots.py), so an
  event is explained by the policy its slot held when the kernel made it, also after a
  restart or a replacement (agent/policy/explain.py). Recorded and saved to the slot
  table file at each publish, *before* the flip; loaded at :meth:`start`, before any
  record is explained. At start the live slots whose policy is unchanged are adopted
  (they keep their slot: no second copy of every policy is needed across a restart).
* ``containers``: cgroup id -> container, for every container cgroup in mr_pscope. Filled
  at start from mr_pscope (a restarted agent re-resolves what the kernel already knows),
  then by ``Holds.classify`` as mr_ppend rows appear (kernel cgroup mkdir).
* held tasks (mr_phold): decided by ``Holds.decide`` once their cgroup is classified.
* ``image_list``: the image-verdict list (issue 16, moray.api.imageverdicts) read from
  ``<policy dir>/.image-verdicts.json`` (written by the control-plane hook,
  agent/controlplane/policydir.py, after the signature verified) when the directory
  changes; a file that cannot be read keeps the previous list (error in the status).
  Held first execs of new containers are judged against it (agent/policy/images.py).
* ``identity``: the (device, inode) of every file the file rules cover (mr_pino,
  agent/policy/identity.py), refreshed after a publication, when containers are
  classified and periodically.

Runs on its own thread; it is the only writer of the policy maps while the agent runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from moray.agent.bpf import abi
from moray.agent.events.types import Decision, ImageHit
from moray.agent.policy.apply import Applier, dec_conf, u32
from moray.agent.policy.compile import CompileError, compile_policies
from moray.agent.policy.hold import Holds, Resolver, boot_ns
from moray.agent.policy.identity import Identities
from moray.agent.policy.images import image_block
from moray.agent.policy.scope import ContainerLike, slots_for
from moray.agent.policy.slots import SlotHistory, SlotView
from moray.api.imageverdicts import ImageVerdictList, ListError
from moray.api.policy.load import load_dir
from moray.api.policy.model import Mode, Policy

log = logging.getLogger(__name__)

DEFAULT_POLICY_DIR = "/etc/moray/policies"
DEFAULT_STATUS = "/run/moray/policy-status.json"
IMAGE_LIST_FILE = ".image-verdicts.json"   # a dot file: load_dir does not read it


class PolicyEngine:
    def __init__(self, applier: Applier, resolver: Resolver, policy_dir: str,
                 *, emit: Callable[[Decision], object] | None = None,
                 tiers: dict[str, str] | None = None,
                 proc: str = "/proc", status_file: str | None = DEFAULT_STATUS,
                 poll: float = 0.5, tick: float = 0.01,
                 slots: SlotHistory | None = None,
                 guard_journal: str | None = None,
                 hooks: Callable[[], dict[str, list[str]]] | None = None) -> None:
        self.applier = applier
        self.hooks = hooks  # enforcement programs attached now, by hook kind (status file)
        self.resolver = resolver
        self.policy_dir = policy_dir
        self.tiers = tiers or {}
        self.proc = proc
        # held execs and pending cgroups; decisions leave as typed events through emit
        self.hold = Holds(applier, resolver, proc=proc, emit=emit, translate=self._translate,
                          image_check=self._image_check)
        self.image_list: ImageVerdictList | None = None
        self.image_list_sha = ""
        self.image_list_error = ""
        self.identity = Identities(applier.maps, proc=proc)
        self.status_file = status_file
        self.poll = poll
        self.tick_s = tick
        self.active: dict[str, tuple[int, Policy]] = {}
        self.slots = slots if slots is not None else SlotHistory()
        self.guard_journal = guard_journal  # agent/policy/guard.py's decisions, reported
        self.containers: dict[int, ContainerLike] = {}
        self.errors: list[str] = []
        self.generation = 0
        self._dir_sig: tuple[tuple[str, int, int], ...] | None = None
        self._next_poll = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.identity.claim()
        started = boot_ns()  # before the first heartbeat: from then on new execs are held
        self.heartbeat()
        self.adopt_slots()
        self.sync_from_kernel()
        self.reload(force=True)
        # agent down: what the guard decided, and containers made before this start
        if self.guard_journal:
            self.hold.report_journal(self.guard_journal)
        self.hold.uncovered_before = started
        if self.classify_pending():
            self.refresh_identities()
        self.hold.decide()
        self._thread = threading.Thread(target=self._run, name="moray-policy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop; the heartbeat is made stale at once, so the kernel treats the
        agent as down from now on (docs/policy.md "Agent down"). A task held right now is
        decided at the next start, by the guard (agent/policy/guard.py), or continued by
        `unload`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.applier.heartbeat(max(1, boot_ns() - abi.ALIVE_NS))

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
                if self.classify_pending() or self.identity.due():
                    self.refresh_identities()
                self.hold.decide()
            except (OSError, ValueError, KeyError, CompileError) as err:
                # the loop must go on: the kernel keeps enforcing the last published state
                log.exception("policy loop error: %s", err)

    def heartbeat(self) -> None:
        self.applier.heartbeat(boot_ns())

    # ------------------------------------------------------------------ slot names

    def adopt_slots(self) -> int:
        """Load the slot table a previous agent saved with these maps; the live slots it
        names keep their policy (an unchanged policy keeps its slot at the next publish).
        Returns how many slots were adopted."""
        n = self.slots.load()
        live = self.applier.live()[0].active
        adopted = 0
        for s, p in sorted(self.slots.latest().items()):
            if (live >> s) & 1 and p.document and p.name not in self.active:
                self.active[p.name] = (s, p)
                adopted += 1
        if n:
            log.info("slot table loaded", extra={
                "entries": n, "adopted": {n_: s for n_, (s, _) in self.active.items()}})
        return adopted

    def policies_at(self, ts: int) -> Mapping[int, Policy]:
        """The policies by slot when the kernel made a record at boot-clock *ts*."""
        return SlotView(self.slots, ts)

    @property
    def by_slot(self) -> Mapping[int, Policy]:
        """The policies by slot now (the latest entry of each slot)."""
        return self.slots.latest()

    def _translate(self, mask: int, ts: int) -> int:
        return self.slots.translate(mask, ts, self.active)

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
        list_changed = self._load_image_list()
        policies, errors = load_dir(self.policy_dir)
        self.errors = [str(e) for e in errors]
        if self.image_list_error:
            self.errors.append(self.image_list_error)
        for e in errors:
            log.error("invalid policy (ignored, previous version kept): %s", e)
        by_name = {p.name: p for p in policies}
        for err in errors:  # keep the last good version of a policy whose file broke
            for prob in err.problems:
                for name, (_slot, old) in self.active.items():
                    if old.source == prob.file and name not in by_name:
                        by_name[name] = old
        applied = self.apply(list(by_name.values()), force=force)
        if list_changed and not applied:
            self._write_status()
        return applied

    # ------------------------------------------------------------------ image verdicts

    def _load_image_list(self) -> bool:
        """Read the image-verdict list file if it changed; True if the list changed."""
        path = Path(self.policy_dir, IMAGE_LIST_FILE)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            changed = self.image_list is not None
            self.image_list, self.image_list_sha, self.image_list_error = None, "", ""
            return changed
        except OSError as err:
            self.image_list_error = f"{path}: {err}"
            return False
        sha = hashlib.sha256(raw).hexdigest()
        if sha == self.image_list_sha:
            return False
        try:
            vlist = ImageVerdictList.from_document(json.loads(raw))
        except (ValueError, ListError) as err:
            self.image_list_error = f"{path}: {err}"
            log.error("image-verdict list not readable (previous one kept)", extra={
                "path": str(path), "error": str(err)})
            return False
        self.image_list, self.image_list_sha, self.image_list_error = vlist, sha, ""
        log.info("image-verdict list loaded", extra={"version": vlist.version,
                                                     "images": len(vlist)})
        return True

    def _image_check(self, cgroup_id: int, mask: int) -> tuple[int, ImageHit | None]:
        return image_block(self.containers.get(cgroup_id), self._slotted(), mask,
                           self.image_list)

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
        # names first: the slot table is on disk before any record can carry a new slot
        if self.slots.record(slotted, boot_ns()):
            try:
                self.slots.save()
            except OSError as err:
                log.error("cannot write the slot table: records made before a restart "
                          "may be named slot-N", extra={"path": self.slots.path,
                                                        "error": str(err)})
                with contextlib.suppress(OSError):
                    os.unlink(self.slots.path or "")  # never adopt a stale table
        self.applier.publish(compiled, scope)
        self.active = new
        self.hold.closed_enforcing = compiled.conf.down_closed & compiled.conf.enforce
        self.refresh_identities()
        self.generation += 1
        # the status file first: "policies applied" in the log then means the file says so
        self._write_status()
        log.info("policies applied", extra={"policies": {n: s for n, (s, _) in new.items()}})
        return True

    def refresh_identities(self) -> None:
        """mr_pino <- the identity of every file the live file rules cover."""
        slotted = [(s, p) for s, p in self._slotted()
                   if p.files.deny or p.files.monitor or p.exec.deny]
        if slotted or self.identity.snap.rows:
            self.identity.refresh(slotted, self.containers)

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
               "containers": len(self.containers), "tiers": self.tiers,
               "hooks": self.hooks() if self.hooks is not None else None,
               "image_verdicts": None if self.image_list is None else {
                   "version": self.image_list.version, "images": len(self.image_list),
                   "sha256": self.image_list_sha}}
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

    def classify_pending(self) -> int:
        """mr_ppend rows -> mr_pscope (containers) or nothing (host). Returns how many."""
        return self.hold.classify(self.containers, self._slotted())

    @property
    def decisions(self) -> dict[str, int]:
        return self.hold.decisions


__all__ = ["DEFAULT_POLICY_DIR", "Mode", "PolicyEngine", "dec_conf", "u32"]
