"""A loaded ruleset (:class:`~moray.agent.detect.model.RawRuleset`) -> a compiled
:class:`~moray.agent.detect.plan.RuleSet`: every macro, condition and exception parsed
and type-checked against the fields, rule keys checked (priority, tags, mitre, response,
throttle, watch, output fields), conditions compiled into predicates, `~/` in `watch`
expanded to the given home directories. Pure: no I/O; every problem carries file:line
and the whole ruleset is refused (RuleError) if there is any."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.fields import FIELDS, absent_text
from moray.agent.detect.lang import (
    And,
    ConditionError,
    Node,
    Not,
    Or,
    Parser,
    compile_node,
    event_types,
    field_values,
    prune_type_tests,
)
from moray.agent.detect.model import RESPONSES, Priority, RawRule, RawRuleset, Rule, RuleError
from moray.agent.detect.plan import RuleSet
from moray.errors import Problem

_MITRE = re.compile(r"^T\d{4}(\.\d{3})?$")
_OUT_FIELD = re.compile(r"%([a-z_]+\.[a-z_.]+)")


def compile_rules(raw: RawRuleset, homes: Iterable[str]) -> RuleSet:
    """Compile *raw* (no problems so far) into a RuleSet; raises RuleError."""
    return _Compiler(raw).compile(homes)


class _Compiler:
    def __init__(self, raw: RawRuleset) -> None:
        self.raw = raw
        self.problems: list[Problem] = list(raw.problems)

    def compile(self, homes: Iterable[str]) -> RuleSet:
        parsed: dict[str, Node] = {}
        # every macro must parse even if unused: a broken macro is a broken file
        for name, text in self.raw.macros.items():
            file, line = self.raw.macro_src[name]
            try:
                Parser(self.raw.macros, self.raw.lists, parsed, (name,)).parse(text)
            except ConditionError as err:
                self.problems.append(Problem(file, line, f"macro {name!r}", str(err)))
        out: list[Rule] = []
        watch: list[list[str]] = []
        for raw in self.raw.rules.values():
            r = self._compile_rule(raw, parsed)
            if r is None:
                continue
            out.append(r)
            w = raw.vals.get("watch") or []
            watch.extend(_expand_home(p, homes) for p in w)
        if self.problems:
            raise RuleError(self.problems)
        flat = sorted({p for ps in watch for p in ps})
        return RuleSet(out, tuple(flat))

    def _compile_rule(self, raw: RawRule,  # noqa: PLR0915 (one check per key)
                      parsed: dict[str, Node]) -> Rule | None:
        v, where, f = raw.vals, raw.where, raw.file
        before = len(self.problems)

        def bad(key: str, msg: str) -> None:
            self.problems.append(Problem(f, raw.lines.get(key, raw.line), f"{where}.{key}",
                                         msg))

        enabled = v.get("enabled", True)
        if not isinstance(enabled, bool):
            bad("enabled", "must be true or false")
        prio_s = v.get("priority", "WARNING")
        prio = Priority.__members__.get(str(prio_s).upper())
        if prio is None:
            bad("priority", f"unknown priority {prio_s!r} (one of: "
                            f"{', '.join(Priority.__members__)})")
        tags = v.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            bad("tags", "must be a list of strings")
            tags = []
        mitre = v.get("mitre", [])
        if not isinstance(mitre, list) or not all(isinstance(t, str) and _MITRE.match(t)
                                                  for t in mitre):
            bad("mitre", "must be a list of ATT&CK technique ids (T1059, T1611.001)")
            mitre = []
        response = v.get("response", "none")
        if response not in RESPONSES:
            bad("response", f"unknown response {response!r} (one of: {', '.join(RESPONSES)})")
        throttle = v.get("throttle", 0)
        if not isinstance(throttle, (int, float)) or throttle < 0:
            bad("throttle", "must be a number of seconds >= 0")
            throttle = 0
        w = v.get("watch", [])
        if not isinstance(w, list) or not all(isinstance(p, str) and (
                p.startswith("/") or p.startswith("~/")) and len(p.encode()) < 255 for p in w):
            bad("watch", "must be a list of absolute path prefixes (or ~/...), < 255 bytes")
        desc = v.get("desc", "")
        if not isinstance(desc, str):
            bad("desc", "must be a string")
        node: Node | None = None
        cond = v.get("condition")
        if not isinstance(cond, str) or not cond.strip():
            if enabled is not False:
                bad("condition", "must be a non-empty string")
        else:
            try:
                node = Parser(self.raw.macros, self.raw.lists, parsed).parse(cond)
            except ConditionError as err:
                bad("condition", str(err))
        excs: list[Node] = []
        for ename, econd, eline in raw.exceptions:
            try:
                excs.append(Parser(self.raw.macros, self.raw.lists, parsed).parse(econd))
            except ConditionError as err:
                self.problems.append(Problem(f, eline, f"{where}.exceptions[{ename}]",
                                             str(err)))
        output = v.get("output", "")
        if not isinstance(output, str):
            bad("output", "must be a string")
            output = ""
        for fname in _OUT_FIELD.findall(output):
            if fname not in FIELDS:
                bad("output", f"unknown field %{fname}")
        types = event_types(node) if node is not None else None
        if node is not None and not types:
            bad("condition", "the condition does not restrict the event type: add "
                             "`evt.type = ...` (or a field of one event type), so the rule "
                             "is not evaluated for every event")
        if len(self.problems) > before or enabled is False or node is None:
            return None
        assert prio is not None and types is not None
        pruned = prune_type_tests(node, types)  # the index already selected the type
        full: Node | None = pruned if not excs else And((
            *((pruned,) if pruned is not None else ()),
            Not(Or(tuple(excs)) if len(excs) > 1 else excs[0])))
        match = compile_node(full) if full is not None else _always
        guard_key: Node | None = None
        guard = rest = None
        if isinstance(full, And) and len(full.items) > 1:
            guard_key = full.items[0]
            guard = compile_node(guard_key)
            tail = full.items[1:]
            rest = compile_node(tail[0] if len(tail) == 1 else And(tail))
        return Rule(raw.name, desc, prio, tuple(tags), tuple(mitre), types,
                    field_values(node, "syscall.name", "syscall") if "syscall" in types
                    else None,
                    match, _formatter(output or raw.name), response,
                    float(throttle), f"{f}:{raw.line}", guard_key, guard, rest, full)


def _always(c: Ctx) -> bool:
    return True


def _formatter(template: str) -> Callable[[Ctx], str]:
    """A rule's output: `%field` replaced by the event's value; a field the event lacks
    by the reason (fields.absent_text: "success" for the error of a call that succeeded,
    "host" for a host process's container, ...), never a bare placeholder."""
    parts: list[str | tuple[str, Callable[[Ctx], Any]]] = []
    pos = 0
    for m in _OUT_FIELD.finditer(template):
        parts.append(template[pos:m.start()])
        parts.append((m.group(1), FIELDS[m.group(1)].get))
        pos = m.end()
    parts.append(template[pos:])

    def fmt(c: Ctx) -> str:
        out = []
        for p in parts:
            if isinstance(p, str):
                out.append(p)
            else:
                name, get = p
                try:
                    val = get(c)
                except (KeyError, TypeError, AttributeError):
                    val = None
                if val is None or val in ([], ""):  # 0 and False are values
                    out.append(absent_text(name, c))
                else:
                    out.append(" ".join(map(str, val)) if isinstance(val, list) else str(val))
        return "".join(out)
    return fmt


def _expand_home(prefix: str, homes: Iterable[str]) -> list[str]:
    if not prefix.startswith("~/"):
        return [prefix]
    rest = prefix[2:]
    return sorted({h.rstrip("/") + "/" + rest for h in homes})
