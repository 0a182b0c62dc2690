"""Detection rule records: what a rule file says once loaded (:class:`RawRule`,
:class:`RawRuleset`, built by load.py) and what a rule is once compiled (:class:`Rule`,
built by compile.py), with :class:`Priority`, the responses, and :class:`RuleError` (every
file:line problem of a refused ruleset). Records only: no I/O, no evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from moray.errors import Problem, ValidationError

if TYPE_CHECKING:
    from moray.agent.detect.ctx import Ctx
    from moray.agent.detect.lang import Node, Pred


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


# what a rule may do besides alerting (`response:`)
RESPONSES = ("none", "kill", "stop_container")


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
    # macro open_write) share one evaluation of it per event (plan.py: RuleSet.plans)
    guard_key: Node | None = None
    guard: Pred | None = None
    rest: Pred | None = None
    cond: Node | None = None  # the whole condition, exceptions included (None: always)


@dataclass
class RawRule:
    """One rule item as written (merged with its `append: true` items), before compilation."""

    name: str
    file: str
    line: int
    where: str
    vals: dict[str, Any]
    lines: dict[str, int]
    exceptions: list[tuple[str, str, int]] = field(default_factory=list)  # name, cond, line


@dataclass
class RawRuleset:
    """The rule files' items merged in order: named lists, macros (with where each
    condition was written), rules by name, and the problems found while reading them."""

    problems: list[Problem] = field(default_factory=list)
    lists: dict[str, list[str]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    macro_src: dict[str, tuple[str, int]] = field(default_factory=dict)
    rules: dict[str, RawRule] = field(default_factory=dict)
