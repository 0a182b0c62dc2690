"""How the engine evaluates a compiled ruleset: :class:`RuleSet` indexes the rules by event
type and syscall name, each index with its :func:`plan` (rules grouped by a shared leading
test, evaluated once per event); open events go through a :class:`FilePlan` instead,
which remembers per path and flags which rules' file-only tests hold (the hot path of
the pipeline: docs/notes.md). A RuleSet is built once per load and not changed after;
a FilePlan's memo is its only state (bounded, cleared when full)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.fields import FILE_PURE
from moray.agent.detect.lang import (
    And,
    Node,
    Pred,
    compile_node,
    conjuncts,
    node_fields,
    specialize,
)
from moray.agent.detect.model import Rule

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
    counted again); `last` holds the last event's remembered candidates."""

    def __init__(self, etype: str, rules: Iterable[Rule], size: int = 8192) -> None:
        self.etype = etype
        self.size = size
        self._cache: dict[tuple[Any, ...], tuple[tuple[Rule, Pred | None], ...]] = {}
        self.rules: list[tuple[Rule, Pred | None, Pred | None]] = []
        # the last event's candidates when they hold for every event of its file (no rule's
        # file test raised): (the event, its candidates); agent/pipeline/fastopen.py reads
        # it right after detection to learn which files no rule can match
        self.last: tuple[dict[str, Any], tuple[tuple[Rule, Pred | None], ...]] | None = None
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
            self.last = (c.e, got)
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
        self.last = (c.e, got) if ok else None
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
