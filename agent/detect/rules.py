"""Rule files (YAML) -> a validated, compiled :class:`RuleSet`.

A rule file is a list of items, applied in order across files (the default ruleset
first, then each `--rules FILE`):

    - list: shell_binaries            # a named list; `append: true` extends an earlier one
      items: [sh, bash, dash]
    - macro: container                # a named condition; `append: true` ORs onto it
      condition: container.id exists
    - rule: Shell in container        # a rule; the same name again replaces it, or with
      desc: ...                       #   `append: true` adds exceptions / changes
      condition: evt.type = exec and container and proc.name in (shell_binaries)
      output: "shell %proc.cmdline in %container.name"   # %field is substituted
      priority: WARNING               # syslog severities, EMERGENCY .. DEBUG
      tags: [container, shell]
      mitre: [T1059.004]              # ATT&CK technique ids, added to the alert's tags
      exceptions:                     # the rule does not fire when any of these match
        - {name: ci-runner, condition: container.image startswith registry.local/ci/}
      throttle: 60                    # at most one alert per process per N seconds
      response: kill                  # kill | stop_container (detect, then respond)
      watch: [/usr/bin/]              # path prefixes the kernel must report opens of
      enabled: true

Every error names the file, line and field (`custom.yaml:14: rules[3].condition: unknown
field 'proc.nmae' (did you mean proc.name?)`); unknown keys are errors; a ruleset with any
error is refused as a whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import yaml

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.fields import FIELDS, FILE_PURE
from moray.agent.detect.lang import (
    And,
    ConditionError,
    Node,
    Not,
    Or,
    Parser,
    Pred,
    compile_node,
    conjuncts,
    event_types,
    field_values,
    node_fields,
    prune_type_tests,
    specialize,
)
from moray.errors import Problem, ValidationError

DEFAULT_RULES = Path(__file__).with_name("rules") / "default.yaml"


class Priority(IntEnum):
    """Syslog severities (RFC 5424): lower is more severe."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7


RESPONSES = ("none", "kill", "stop_container")
_MITRE = re.compile(r"^T\d{4}(\.\d{3})?$")
_OUT_FIELD = re.compile(r"%([a-z_]+\.[a-z_.]+)")
LIST_KEYS = ("list", "items", "append")
MACRO_KEYS = ("macro", "condition", "append")
RULE_KEYS = ("rule", "desc", "condition", "output", "priority", "tags", "mitre", "exceptions",
             "throttle", "response", "watch", "enabled", "append")


class RuleError(ValidationError, ValueError):
    """The ruleset is invalid; `problems` lists every error found."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    desc: str
    priority: Priority
    tags: tuple[str, ...]
    mitre: tuple[str, ...]
    types: frozenset[str]
    syscalls: frozenset[str] | None  # syscall rules: the syscall names it can match
    match: Pred
    output: Callable[[Ctx], str]
    response: str
    throttle: float
    source: str              # file:line
    # match == guard and rest: rules whose conditions start with the same test (e.g. the
    # macro open_write) share one evaluation of it per event (RuleSet.plan)
    guard_key: Node | None = None
    guard: Pred | None = None
    rest: Pred | None = None
    cond: Node | None = None  # the whole condition, exceptions included (None: always)


Plan = tuple[tuple["Pred | None", tuple[Rule, ...]], ...]


def plan(rules: Iterable[Rule]) -> Plan:
    """Rules grouped by their leading test, in first-seen order: the engine evaluates a
    group's guard once per event and each rule's remaining condition only if it held."""
    groups: dict[object, tuple[Pred | None, list[Rule]]] = {}
    for r in rules:
        key: object = r.guard_key if r.guard_key is not None else ("rule", r.name)
        if key not in groups:
            groups[key] = (r.guard if r.guard_key is not None else None, [])
        groups[key][1].append(r)
    return tuple((g, tuple(rs)) for g, rs in groups.values())


class FilePlan:
    """The rules for one event type that carries a file (open), split per rule into the
    tests that read only FILE_PURE fields and the rest. Which rules' file tests hold is
    remembered per Ctx.file_key (bounded), so an open of an already seen path and flags
    costs one dict lookup plus the remaining tests of the rules it could still match;
    for an open no rule cares about (most of them), nothing else.

    `candidates(c)` -> ((rule, rest or None) ...) in rule order; `failed(rule, etype)` is
    called for a rule whose file tests raised (such a key is not remembered, so it is
    counted again)."""

    def __init__(self, etype: str, rules: Iterable[Rule], size: int = 8192) -> None:
        self.etype = etype
        self.size = size
        self._cache: dict[tuple[Any, ...], tuple[tuple[Rule, Pred | None], ...]] = {}
        self.rules: list[tuple[Rule, Pred | None, Pred | None]] = []
        for r in rules:
            spec = specialize(r.cond, etype) if r.cond is not None else True
            if spec is False:
                continue
            items = () if spec is True else conjuncts(spec)
            pure = [i for i in items if node_fields(i) <= FILE_PURE]
            rest = [i for i in items if not node_fields(i) <= FILE_PURE]
            self.rules.append((r, _compile_all(pure), _compile_all(rest)))

    def candidates(self, c: Ctx, failed: Callable[[Rule, str], None]) -> tuple[
            tuple[Rule, Pred | None], ...]:
        try:
            k = c.file_key
            got = self._cache.get(k) if k is not None else None
        except Exception:  # a malformed event (no flags, an unhashable path): no memo
            k = got = None
        if got is not None:
            return got
        out = []
        ok = k is not None
        for r, pure, rest in self.rules:
            try:
                if pure is None or pure(c):
                    out.append((r, rest))
            except Exception:  # a rule bug: counted by the engine, the other rules go on
                failed(r, self.etype)
                ok = False
        got = tuple(out)
        if ok:
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[k] = got  # type: ignore[index]
        return got


def _compile_all(items: list[Node]) -> Pred | None:
    if not items:
        return None
    return compile_node(items[0] if len(items) == 1 else And(tuple(items)))


# event types whose rules go through a FilePlan (their events carry Ctx.file_key)
FILE_TYPES = ("open",)


@dataclass
class RuleSet:
    rules: list[Rule]
    watch: tuple[str, ...]   # extra mr_watch prefixes the enabled rules need
    by_type: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    # syscall events: rules by syscall name, in rule order (unrestricted rules in every list)
    by_syscall: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    any_syscall: tuple[Rule, ...] = ()
    plans: dict[str, Plan] = field(default_factory=dict)          # by event type
    syscall_plans: dict[str, Plan] = field(default_factory=dict)  # by syscall name
    any_syscall_plan: Plan = ()
    file_plans: dict[str, FilePlan] = field(default_factory=dict)  # FILE_TYPES only

    def __post_init__(self) -> None:
        idx: dict[str, list[Rule]] = {}
        for r in self.rules:
            for t in sorted(r.types):
                idx.setdefault(t, []).append(r)
        self.by_type = {t: tuple(rs) for t, rs in idx.items()}
        sys_rules = idx.get("syscall", [])
        names = {n for r in sys_rules if r.syscalls for n in r.syscalls}
        self.any_syscall = tuple(r for r in sys_rules if r.syscalls is None)
        self.by_syscall = {n: tuple(r for r in sys_rules if r.syscalls is None or n in
                                    r.syscalls) for n in names}
        # open events go through file_plans instead (FilePlan)
        self.plans = {t: plan(rs) for t, rs in self.by_type.items() if t not in FILE_TYPES}
        self.syscall_plans = {n: plan(rs) for n, rs in self.by_syscall.items()}
        self.any_syscall_plan = plan(self.any_syscall)
        self.file_plans = {t: FilePlan(t, self.by_type[t]) for t in FILE_TYPES
                           if t in self.by_type}


# --------------------------------------------------------------------------- raw items

@dataclass
class _RawRule:
    name: str
    file: str
    line: int
    where: str
    vals: dict[str, Any]
    lines: dict[str, int]
    exceptions: list[tuple[str, str, int]] = field(default_factory=list)  # name, cond, line


class _Loader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.lists: dict[str, list[str]] = {}
        self.macros: dict[str, str] = {}
        self.macro_src: dict[str, tuple[str, int]] = {}
        self.rules: dict[str, _RawRule] = {}

    def err(self, file: str, node: yaml.Node | None, where: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Problem(file, line, where, msg))

    def load_text(self, text: str, file: str) -> None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            self.problems.append(Problem(file, mark.line + 1 if mark else 0, "<document>",
                                         f"not valid YAML: {getattr(e, 'problem', e)}"))
            return
        if root is None:
            return
        if not isinstance(root, yaml.SequenceNode):
            self.err(file, root, "<document>", "a rule file is a list of list/macro/rule items")
            return
        for i, item in enumerate(root.value):
            self._item(file, item, f"[{i}]")

    def _mapping(self, file: str, node: yaml.Node, where: str,
                 allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, Any]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err(file, node, where, "must be a mapping")
            return None
        out: dict[str, tuple[yaml.Node, Any]] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key not in allowed:
                self.err(file, k, f"{where}.{key}",
                         f"unknown field (expected one of: {', '.join(allowed)})")
                continue
            if key in out:
                self.err(file, k, f"{where}.{key}", "given twice")
                continue
            out[key] = (v, yaml.safe_load(yaml.serialize(v)))
        return out

    def _str(self, file: str, m: dict[str, tuple[yaml.Node, Any]], key: str, where: str,
             required: bool = False) -> str | None:
        if key not in m:
            if required:
                self.problems.append(Problem(file, 0, f"{where}.{key}", "missing"))
            return None
        node, val = m[key]
        if not isinstance(val, str) or not val.strip():
            self.err(file, node, f"{where}.{key}", "must be a non-empty string")
            return None
        return val

    def _strs(self, file: str, m: dict[str, tuple[yaml.Node, Any]], key: str,
              where: str) -> list[str] | None:
        if key not in m:
            return None
        node, val = m[key]
        if not isinstance(val, list) or not all(isinstance(x, (str, int)) for x in val):
            self.err(file, node, f"{where}.{key}", "must be a list of strings")
            return None
        return [str(x) for x in val]

    def _item(self, file: str, node: yaml.Node, where: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            self.err(file, node, where, "must be a mapping with list, macro or rule")
            return
        keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        line = node.start_mark.line + 1
        if "list" in keys:
            m = self._mapping(file, node, where, LIST_KEYS)
            if m is None:
                return
            name = self._str(file, m, "list", where)
            items = self._strs(file, m, "items", where)
            if name is None or items is None:
                if items is None and "items" not in m:
                    self.problems.append(Problem(file, line, f"{where}.items", "missing"))
                return
            if m.get("append", (None, False))[1] is True:
                if name not in self.lists:
                    self.problems.append(Problem(file, line, f"{where}.append",
                                                 f"no earlier list {name!r} to append to"))
                    return
                self.lists[name] = self.lists[name] + items
            else:
                self.lists[name] = items
        elif "macro" in keys:
            m = self._mapping(file, node, where, MACRO_KEYS)
            if m is None:
                return
            name = self._str(file, m, "macro", where)
            cond = self._str(file, m, "condition", where, required=True)
            if name is None or cond is None:
                return
            if name in FIELDS:
                self.err(file, m["macro"][0], f"{where}.macro",
                         f"{name!r} is a field name; choose another macro name")
                return
            if m.get("append", (None, False))[1] is True:
                if name not in self.macros:
                    self.problems.append(Problem(file, line, f"{where}.append",
                                                 f"no earlier macro {name!r} to append to"))
                    return
                self.macros[name] = f"({self.macros[name]}) or ({cond})"
            else:
                self.macros[name] = cond
            self.macro_src[name] = (file, m["condition"][0].start_mark.line + 1)
        elif "rule" in keys:
            self._rule(file, node, where, line)
        else:
            self.err(file, node, where, "an item needs one of: list, macro, rule")

    def _rule(self, file: str, node: yaml.Node, where: str, line: int) -> None:
        m = self._mapping(file, node, where, RULE_KEYS)
        if m is None:
            return
        name = self._str(file, m, "rule", where)
        if name is None:
            return
        where = f"rule {name!r}"
        lines = {k: n.start_mark.line + 1 for k, (n, _) in m.items()}
        vals = {k: v for k, (_, v) in m.items()}
        excs: list[tuple[str, str, int]] = []
        if "exceptions" in m:
            enode, evals = m["exceptions"]
            if not isinstance(evals, list) or not isinstance(enode, yaml.SequenceNode):
                self.err(file, enode, f"{where}.exceptions", "must be a list")
            else:
                for j, en in enumerate(enode.value):
                    em = self._mapping(file, en, f"{where}.exceptions[{j}]",
                                       ("name", "condition"))
                    if em is None:
                        continue
                    ename = self._str(file, em, "name", f"{where}.exceptions[{j}]", True)
                    econd = self._str(file, em, "condition", f"{where}.exceptions[{j}]", True)
                    if ename and econd:
                        excs.append((ename, econd, en.start_mark.line + 1))
        if vals.get("append") is True:
            base = self.rules.get(name)
            if base is None:
                self.problems.append(Problem(file, line, f"{where}.append",
                                             "no earlier rule of that name to append to"))
                return
            if "condition" in vals:
                self.err(file, m["condition"][0], f"{where}.condition",
                         "an appending rule cannot change the condition (add exceptions, or "
                         "redefine the rule without append)")
                return
            for k, v in vals.items():
                if k not in ("rule", "append", "exceptions"):
                    base.vals[k] = v
                    base.lines[k] = lines[k]
            base.exceptions.extend(excs)
            return
        if "condition" not in vals and vals.get("enabled") is not False:
            self.problems.append(Problem(file, line, f"{where}.condition", "missing"))
            return
        self.rules[name] = _RawRule(name, file, line, where, vals, lines, excs)

    # --- compile ------------------------------------------------------------------------

    def compile(self, homes: Iterable[str]) -> RuleSet:
        parsed: dict[str, Node] = {}
        # every macro must parse even if unused: a broken macro is a broken file
        for name, text in self.macros.items():
            file, line = self.macro_src[name]
            try:
                Parser(self.macros, self.lists, parsed, (name,)).parse(text)
            except ConditionError as err:
                self.problems.append(Problem(file, line, f"macro {name!r}", str(err)))
        out: list[Rule] = []
        watch: list[list[str]] = []
        for raw in self.rules.values():
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

    def _compile_rule(self, raw: _RawRule,  # noqa: PLR0915 (one check per key)
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
                node = Parser(self.macros, self.lists, parsed).parse(cond)
            except ConditionError as err:
                bad("condition", str(err))
        excs: list[Node] = []
        for ename, econd, eline in raw.exceptions:
            try:
                excs.append(Parser(self.macros, self.lists, parsed).parse(econd))
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
    parts: list[str | Callable[[Ctx], Any]] = []
    pos = 0
    for m in _OUT_FIELD.finditer(template):
        parts.append(template[pos:m.start()])
        parts.append(FIELDS[m.group(1)].get)
        pos = m.end()
    parts.append(template[pos:])

    def fmt(c: Ctx) -> str:
        out = []
        for p in parts:
            if isinstance(p, str):
                out.append(p)
            else:
                try:
                    val = p(c)
                except (KeyError, TypeError, AttributeError):
                    val = None
                out.append("<NA>" if val is None else
                           " ".join(map(str, val)) if isinstance(val, list) else str(val))
        return "".join(out)
    return fmt


def _expand_home(prefix: str, homes: Iterable[str]) -> list[str]:
    if not prefix.startswith("~/"):
        return [prefix]
    rest = prefix[2:]
    return sorted({h.rstrip("/") + "/" + rest for h in homes})


def host_homes(passwd: str = "/etc/passwd") -> list[str]:
    """Home directories of accounts that can log in (a shell that is not nologin/false)
    in the host's passwd, plus /root and /home/* homes: what `~/` in `watch` expands to."""
    homes = {"/root"}
    try:
        with open(passwd) as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) < 7 or not parts[5].startswith("/") or parts[5] == "/":
                    continue
                shell = parts[6]
                if parts[5].startswith("/home/") or (
                        shell and not shell.endswith(("nologin", "false", "sync"))):
                    homes.add(parts[5].rstrip("/"))
    except OSError:
        pass
    return sorted(homes)


def load(paths: Sequence[str | os.PathLike[str]], default: bool = True,
         homes: Iterable[str] | None = None) -> RuleSet:
    """Load the default ruleset (unless default=False) then each file, in order."""
    ld = _Loader()
    files: list[Path] = ([DEFAULT_RULES] if default else []) + [Path(p) for p in paths]
    for p in files:
        try:
            text = p.read_text()
        except OSError as err:
            ld.problems.append(Problem(str(p), 0, "<file>", f"cannot read: {err.strerror}"))
            continue
        ld.load_text(text, str(p))
    if ld.problems:
        raise RuleError(ld.problems)
    return ld.compile(homes if homes is not None else host_homes())


def load_texts(texts: Sequence[tuple[str, str]], homes: Iterable[str] = ("/root",)) -> RuleSet:
    """(file name, YAML text) pairs -> RuleSet: for tests and tools."""
    ld = _Loader()
    for name, text in texts:
        ld.load_text(text, name)
    if ld.problems:
        raise RuleError(ld.problems)
    return ld.compile(homes)
