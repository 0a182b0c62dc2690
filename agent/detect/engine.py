"""The detection stage: enriched event -> alerts.

`Detector.process(event, proc, parent)` runs after enrichment, on the pipeline thread, with
the event and the process objects the pipeline enriched it from (its process and that
process's parent, agent/enrich/proctree.py; rules read them, never look them up again;
without them, e.g. in tests, they are looked up by the event's exec ids). It updates the
detection state (agent/detect/state.py), evaluates only the rules indexed under the
event's type (each a compiled closure, agent/detect/lang.py), and returns one alert per
rule that matched, in rule order. An alert is the JSON object written beside the events:

    {"type": "alert", "time", "node", "rule", "priority", "severity", "tags", "mitre",
     "output", "source", "event": <the triggering event, as written>,
     "ancestry": [{"pid", "exec_id", "binary", "args", "name"} ...parent first],
     "response": {"action", "ok", "error", "detect_then_respond": true} | null}

A rule that raises (a bug, a field of an unexpected shape) is counted in `errors` and
logged once per rule; the event and the other rules go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.model import Rule
from moray.agent.detect.plan import FilePlan, RuleSet
from moray.agent.detect.response import Responder
from moray.agent.detect.state import State
from moray.agent.enrich.proctree import Process, ProcessTree

log = logging.getLogger(__name__)

CONNECTS = frozenset({"connect", "send"})


class Detector:
    def __init__(self, rules: RuleSet, tree: ProcessTree | None = None, proc: str = "/proc",
                 responder: Responder | None = None, state: State | None = None) -> None:
        self.rules = rules
        self.by_type = rules.by_type
        self.state = state or State(tree, proc)
        self.responder = responder or Responder(proc)
        self.alerts: dict[str, int] = {r.name: 0 for r in rules.rules}
        self.errors = 0
        self._erred: set[str] = set()
        self.evaluated = 0

    def process(self, e: dict[str, Any], proc: Process | None = None,
                parent: Process | None = None) -> list[dict[str, Any]]:
        """Alerts for one enriched event. ``proc``: the event's process and ``parent`` its
        parent (None: none), as the pipeline has them; ``proc`` None: look both up."""
        t = e["type"]
        if t == "exec":
            self.state.observe(e, parent if proc is not None else Ctx(e, self.state).parent)
        elif t in CONNECTS:
            self.state.record_connect(e)
        rs = self.rules
        fplan = rs.file_plans.get(t)
        if fplan is not None:
            return self._process_file(e, fplan, proc, parent)
        if t == "syscall":
            groups = rs.syscall_plans.get(e["syscall"]["name"], rs.any_syscall_plan)
        else:
            groups = rs.plans.get(t, ())
        if not groups:
            return []
        self.evaluated += 1
        c = Ctx(e, self.state, proc, parent)
        out: list[dict[str, Any]] = []
        for guard, rules in groups:
            try:
                if guard is not None and not guard(c):
                    continue
            except Exception:  # a rule bug must not stop detection: count, log once
                self._failed(rules[0], t)
                continue
            for r in rules:
                try:
                    hit = r.match(c) if guard is None else r.rest(c)  # type: ignore[misc]
                except Exception:  # as above
                    self._failed(r, t)
                    continue
                if hit and not (r.throttle and self.state.throttled(
                        r.name, e["process"]["exec_id"], r.throttle)):
                    out.append(self.alert(r, c))
        return out

    def _process_file(self, e: dict[str, Any], fplan: FilePlan, proc: Process | None,
                      parent: Process | None) -> list[dict[str, Any]]:
        """An event with a file (open): only the rules whose file-only tests hold for its
        path and flags (remembered per path and flags) run their other tests."""
        self.evaluated += 1
        c = Ctx(e, self.state, proc, parent)
        cands = fplan.candidates(c, self._failed)
        if not cands:
            return []
        out: list[dict[str, Any]] = []
        for r, rest in cands:
            try:
                hit = rest is None or rest(c)
            except Exception:  # a rule bug must not stop detection: count, log once
                self._failed(r, e["type"])
                continue
            if hit and not (r.throttle and self.state.throttled(
                    r.name, e["process"]["exec_id"], r.throttle)):
                out.append(self.alert(r, c))
        return out

    def _failed(self, r: Rule, t: str) -> None:
        self.errors += 1
        if r.name not in self._erred:
            self._erred.add(r.name)
            log.exception("rule %r raised on a %s event", r.name, t)

    def alert(self, r: Rule, c: Ctx) -> dict[str, Any]:
        e = c.e
        self.alerts[r.name] = self.alerts.get(r.name, 0) + 1
        try:
            message = r.output(c)
        except Exception:  # formatting must not lose the alert
            log.exception("rule %r: output template failed", r.name)
            message = r.name
        ancestry = [{"pid": p.pid, "exec_id": p.exec_id, "binary": p.binary,
                     "args": list(p.args), "name": p.comm} for p in c.ancestors()]
        response = None
        if r.response != "none":
            response = self.responder.act(r.response, e)
        return {"type": "alert", "time": e.get("time"), "node": e.get("node"),
                "rule": r.name, "priority": r.priority.name, "severity": int(r.priority),
                "tags": [*r.tags, *r.mitre], "mitre": list(r.mitre), "output": message,
                "source": r.source, "event": e, "ancestry": ancestry, "response": response}

    def process_all(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in events:
            out.extend(self.process(e))
        return out
