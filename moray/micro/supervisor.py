"""The supervisor: starts the workload under the filter and answers its notified calls.

Owns the rules in force (``policies``, ``plan``, ``identity``: set at start, swapped as
a whole by ``update`` when a pushed policy needs no other kernel filter), the counters
(``Stats``) and the outputs (``sink``, ``forward``). Split by responsibility:

- here: the rules, one notification from receipt to answer (``handle_one``: judge,
  ``id_valid``, refuse / continue / hand an fd over, event), the outputs;
- moray.micro.process (``ProcessDuties``): start-up (clone, filter, listener handed
  over, exec), the loop (select, signals forwarded), reaping, the exit code;
- moray.micro.decide (``Deciders``): what each notified call would do and the verdict
  (exec, mmap, open, connect/send, namespaces, setid, syscall rules, the supervisor
  guard).

Each notified call: read its arguments (moray.micro.notify), resolve paths
(moray.micro.resolve), check ``id_valid``, decide (moray.micro.rules), answer (EPERM, or
continue), write an event for every match. A call the supervisor cannot judge (its
memory unreadable, another root or mount namespace) is refused when an enforcing rule
could apply: fail closed.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moray.api.policy.model import Mode, Policy
from moray.micro import events, notify, rules
from moray.micro import filter as bpf
from moray.micro.decide import NAMES, Answer, Deciders, Gone, Undecidable, kernel_at_least
from moray.micro.inventory import Inventory
from moray.micro.process import ProcessDuties

log = logging.getLogger(__name__)


@dataclass
class Stats:
    notified: int = 0
    refused: int = 0
    gone: int = 0            # callers that went away before the answer
    errors: int = 0
    lost_events: int = 0     # events an output refused
    by_call: dict[str, int] = field(default_factory=dict)


class Supervisor(ProcessDuties, Deciders):
    def __init__(self, policies: Sequence[Policy], sink: events.Sink | None,
                 node: str | None = None, proc: str = "/proc",
                 clock: Any = time.time, exact: bool = True,
                 inventory: Sequence[str] = ()) -> None:
        self.policies = tuple(policies)
        self.sink = sink
        self.node = node or events.node_name()
        self.proc = proc
        self.pid = os.getpid()
        self.plan = rules.plan(self.policies, self.pid)
        self.prog = bpf.assemble(self.plan)
        self.enforcing = any(p.mode is Mode.ENFORCE for p in self.policies)
        self.files_used = any(p.files.used for p in self.policies)
        # drift: changed (ctime) since this instant, unless the start-time inventory has
        # the same content under that path (moray.micro.inventory)
        self.inventory = Inventory(int(clock() * 1e9), inventory)
        self.identity = self._identities()
        self.stats = Stats()
        # held while one call is judged and while update() swaps the rules (the control
        # plane's policy thread): a call is judged by one policy set, old or new
        self._rules_lock = threading.Lock()
        # another exit for every event (the control plane's spool), and what to start once
        # the workload is forked (threads must not exist at the fork)
        self.forward: Callable[[dict[str, Any]], object] | None = None
        self.after_spawn: Callable[[], object] | None = None
        self.child = 0
        self.listener = -1
        self._pipes: tuple[int, ...] = ()
        # opens are made here and handed over (exact) when the kernel can (ADDFD with
        # SEND: 5.14) and the caller's credentials are the supervisor's
        self.exact = exact and kernel_at_least(5, 14)
        self.creds = self._facts(os.getpid()).creds
        self._caller = (0, 0)
        self._proc_dev = os.stat(proc).st_dev
        st_root, st_mnt = os.stat("/"), os.stat(f"{proc}/self/ns/mnt")
        self._root = (st_root.st_dev, st_root.st_ino)
        self._mntns = st_mnt.st_ino

    # ------------------------------------------------------------------ rules

    def _identities(self, policies: Sequence[Policy] | None = None
                    ) -> dict[tuple[int, int], str]:
        """(dev, ino) -> path of every exact path a file rule names, as of start: the
        same file reached by another name (a hard link, /proc/<pid>/fd/N) is covered."""
        out: dict[tuple[int, int], str] = {}
        for p in self.policies if policies is None else policies:
            for r in (*p.files.deny, *p.files.monitor):
                if r.pattern.exact:
                    try:
                        st = os.stat(r.pattern.path)
                    except OSError:
                        continue
                    out[(st.st_dev, st.st_ino)] = r.pattern.path
        return out

    # ------------------------------------------------------------------ live policies

    def update(self, policies: Sequence[Policy]) -> str | None:
        """Enforce ``policies`` from now on if the kernel's filter they need is the one
        installed (only what the supervisor decides changed: exec, file and egress paths,
        a mode): None. Else nothing changes and the reason is returned (the filter cannot
        be replaced under a running workload: a restart applies them)."""
        policies = tuple(policies)
        plan = rules.plan(policies, self.pid)
        if bpf.assemble(plan) != self.prog:
            return ("needs restart: the change alters the kernel's seccomp filter (the "
                    "calls notified or refused), fixed while the workload runs")
        identity = self._identities(policies)
        with self._rules_lock:
            self.policies, self.plan = policies, plan
            self.enforcing = any(p.mode is Mode.ENFORCE for p in policies)
            self.files_used = any(p.files.used for p in policies)
            self.identity = identity
        return None

    # ------------------------------------------------------------------ one call

    def handle_one(self) -> None:
        n = notify.recv(self.listener)
        if n is None:
            return
        with self._rules_lock:
            self._handle(n)

    def _handle(self, n: notify.Notification) -> None:
        self.stats.notified += 1
        name = NAMES.get(n.nr, str(n.nr))
        self.stats.by_call[name] = self.stats.by_call.get(name, 0) + 1
        ans: Answer | None = None
        try:
            verdict, detail = self.judge(n, name)
            ans = detail.pop("_answer", None)
        except Gone:
            self.stats.gone += 1
            return
        except Undecidable as why:
            verdict, detail = self._undecidable(name, str(why))
        except (OSError, ValueError) as err:
            self.stats.errors += 1
            verdict, detail = self._undecidable(name, f"unreadable: {err}")
        except Exception as err:  # a bug must not take the supervisor (and so every
            # notified call of the workload, ENOSYS from then on) down: fail closed
            self.stats.errors += 1
            log.exception("judging %s of pid %d", name, n.pid)
            verdict, detail = self._undecidable(name, f"internal error: {err!r}")
        try:
            # the caller's facts are read while it waits: after a refusal it may be gone
            ev = self._event(n, name, verdict, detail) if verdict.matches else None
            # an exact open asked id_valid itself, before it opened anything
            if (ans is None or verdict.deny) and not notify.id_valid(self.listener, n.id):
                self.stats.gone += 1
                return
            try:
                if verdict.deny:
                    self.stats.refused += 1
                    sent = notify.refuse(self.listener, n.id)
                elif ans is not None:
                    sent = self._answer(n.id, ans)
                else:
                    sent = notify.allow(self.listener, n.id)
            except OSError as err:   # e.g. ADDFD refused: the caller must still be answered
                self.stats.errors += 1
                log.warning("answering %s of pid %d: %s", name, n.pid, err)
                sent = notify.refuse(self.listener, n.id, err.errno or errno.EIO)
            if not sent:
                self.stats.gone += 1
            if ev is not None:
                self._emit(ev)
        finally:
            if ans is not None:
                ans.close()

    def _emit(self, ev: dict[str, Any]) -> None:
        """Every output; one that fails (a full disk) is counted and logged, never the
        end of the supervisor."""
        for out in (self.sink.write if self.sink is not None else None, self.forward):
            if out is None:
                continue
            try:
                out(ev)
            except Exception as err:
                self.stats.lost_events += 1
                log.warning("event not written (%s): %s", getattr(out, "__qualname__", out),
                            err)

    def _answer(self, nid: int, ans: Answer) -> bool:
        if ans.err:
            return notify.refuse(self.listener, nid, ans.err)
        if ans.fifo:
            # opening a FIFO blocks until its other end opens: not on the loop's thread
            pfd, flags = ans.fifo
            ans.fifo = None
            ans.fds.remove(pfd)
            threading.Thread(target=self._fifo_open, args=(nid, pfd, flags, ans.cloexec),
                             daemon=True, name="micro-fifo").start()
            return True
        return notify.add_fd_and_return(self.listener, nid, ans.fd, ans.cloexec)

    def _fifo_open(self, nid: int, pfd: int, flags: int, cloexec: bool) -> None:
        try:
            try:
                fd = os.open(f"/proc/self/fd/{pfd}", flags | os.O_CLOEXEC)
            except OSError as err:
                notify.refuse(self.listener, nid, err.errno or errno.EIO)
                return
            try:
                notify.add_fd_and_return(self.listener, nid, fd, cloexec)
            finally:
                os.close(fd)
        except OSError as err:  # the listener closed at exit, the caller gone
            log.debug("fifo open for notification %d: %s", nid, err)
        finally:
            os.close(pfd)

    def report_start(self, argv: Sequence[str]) -> dict[str, Any]:
        """What is enforced and how: logged at start, and written as a ``micro-start``
        line when events go to a file."""
        return {"notified": sorted(self.plan.notified()),
                "refused": sorted(r.name for r in self.plan.rules
                                  if r.default is rules.Action.ERRNO_EPERM),
                "unsupported": list(self.plan.unsupported), "notes": list(self.plan.notes),
                "policies": [{"name": p.name, "mode": p.mode.value} for p in self.policies],
                "command": list(argv), "supervisor": self.pid}
