"""Export filters (``--export-allow``/``--export-deny``): which events and alerts leave the
agent. Applied by the router (agent/pipeline/route.py) before every output: the JSON
file/stdout, the SIEM/webhook outputs, the control plane's spool and OTLP. Detection and
enforcement run before the router, on every event, so a filter never hides an event from a
rule or a policy.

An item is either a shorthand ``KIND:VALUE[,VALUE...]`` or a condition in the detection
language (agent/detect/lang.py, the fields of agent/detect/fields.py):

    type:open,connect          the object's type (an alert's is ``alert``)
    rule:NAME                  an alert of that rule (events never match)
    priority:WARNING,ERROR     an alert of one of those priorities (events never match)
    min-priority:WARNING       an alert at least that severe (events never match)
    container:ID-OR-NAME,...   the event's container (an alert's: its event's)
    image:GLOB,...             the container's image reference (fnmatch glob)
    namespace:NS,...           the pod's Kubernetes namespace
    label:KEY=VALUE            a container or pod label
    evt.type = open and file.path startswith /proc/      a condition, on events only

A condition is evaluated on events only: an alert passes every condition (tune what a rule
matches in the rule's ``exceptions``; drop an alert by rule, priority or container here).

An object is exported when it matches no deny item and, if allow items are given, at least
one allow item (deny wins). Each deny item counts what it dropped under its own text; the
allow list counts what matched none of its items, as ``allow``
(``moray_export_filtered_total{filter="..."}``).

Owns only the counters; changes nothing in the objects it judges. Runs on the pipeline
thread; an item costs one dict lookup or one compiled closure per object.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.lang import ConditionError, Parser, compile_node
from moray.agent.detect.model import Priority
from moray.agent.detect.state import State
from moray.errors import ConfigError

Match = Callable[[dict[str, Any]], bool]

KINDS = ("type", "rule", "priority", "min-priority", "container", "image", "namespace",
         "label")
_SHORT = re.compile(r"^\s*([a-z][a-z-]*):(.*)$", re.DOTALL)
# a condition never starts with "word:" (fields are dotted names), so that is a shorthand
ALIASES = {"INFO": "INFORMATIONAL", "WARN": "WARNING", "ERR": "ERROR", "CRIT": "CRITICAL",
           "EMERG": "EMERGENCY"}


class FilterError(ConfigError):
    """An export filter that cannot be used; the message names the option and the item."""


def _priority(option: str, text: str, name: str) -> Priority:
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    try:
        return Priority[key]
    except KeyError:
        raise FilterError(f"{option} {text!r}: unknown priority {name.strip()!r} (one of "
                          f"{', '.join(p.name for p in Priority)})") from None


def _container(e: dict[str, Any]) -> dict[str, Any] | None:
    """The container an object is about: an event's own, an alert's event's."""
    if e.get("type") == "alert":
        ev = e.get("event")
        return ev.get("container") if isinstance(ev, dict) else None
    c = e.get("container")
    return c if isinstance(c, dict) else None


def _shorthand(option: str, text: str, kind: str, value: str) -> Match:
    vals = [v.strip() for v in (value.split(",") if kind != "rule" else [value])]
    vals = [v for v in vals if v]
    if not vals:
        raise FilterError(f"{option} {text!r}: {kind}: needs a value")
    want = frozenset(vals)
    if kind == "type":
        from moray.agent.detect.fields import EVENT_TYPES
        known = EVENT_TYPES | {"alert"}
        bad = sorted(want - known)
        if bad:
            raise FilterError(f"{option} {text!r}: unknown event type {bad[0]!r} (one of "
                              f"{', '.join(sorted(known))})")
        return lambda e: e.get("type") in want
    if kind == "rule":
        rule = vals[0]
        return lambda e: e.get("type") == "alert" and e.get("rule") == rule
    if kind == "priority":
        names = frozenset(_priority(option, text, v).name for v in vals)
        return lambda e: e.get("type") == "alert" and e.get("priority") in names
    if kind == "min-priority":
        if len(vals) != 1:
            raise FilterError(f"{option} {text!r}: min-priority takes one priority")
        floor = int(_priority(option, text, vals[0]))
        return lambda e: (e.get("type") == "alert" and isinstance(e.get("severity"), int)
                          and e["severity"] <= floor)
    if kind == "container":
        def container(e: dict[str, Any]) -> bool:
            c = _container(e)
            return c is not None and (c.get("id") in want or c.get("name") in want)
        return container
    if kind == "image":
        pats = tuple(vals)

        def image(e: dict[str, Any]) -> bool:
            c = _container(e)
            img = c.get("image") if c is not None else None
            return isinstance(img, str) and any(fnmatch.fnmatchcase(img, p) for p in pats)
        return image
    if kind == "namespace":
        def namespace(e: dict[str, Any]) -> bool:
            c = _container(e)
            pod = c.get("pod") if c is not None else None
            return isinstance(pod, dict) and pod.get("namespace") in want
        return namespace
    # label
    pairs = []
    for v in vals:
        k, eq, val = v.partition("=")
        if not eq or not k:
            raise FilterError(f"{option} {text!r}: label: wants KEY=VALUE, got {v!r}")
        pairs.append((k, val))

    def label(e: dict[str, Any]) -> bool:
        c = _container(e)
        if c is None:
            return False
        pod = c.get("pod")
        sets = (c.get("labels") or {}, (pod.get("labels") or {}) if isinstance(pod, dict)
                else {})
        return any(s.get(k) == val for k, val in pairs for s in sets)
    return label


def _condition(option: str, text: str, state: State) -> Match:
    try:
        pred = compile_node(Parser({}, {}).parse(text))
    except ConditionError as err:
        raise FilterError(f"{option} {text!r}: {err}") from None

    def condition(e: dict[str, Any]) -> bool:
        if e.get("type") == "alert":
            return False
        return bool(pred(Ctx(e, state)))
    return condition


def compile_item(option: str, text: str, state: State) -> Match:
    """One ``--export-allow``/``--export-deny`` item -> its predicate; a FilterError names
    the option, the item and what is wrong (as rule conditions do, with "did you mean")."""
    if not text.strip():
        raise FilterError(f"{option}: empty filter")
    m = _SHORT.match(text)
    if m is not None:
        kind, value = m.group(1), m.group(2)
        if kind not in KINDS:
            raise FilterError(f"{option} {text!r}: unknown filter kind {kind!r} (one of "
                              f"{', '.join(KINDS)}; or a condition such as "
                              f"'evt.type = open and file.path startswith /proc/')")
        return _shorthand(option, text, kind, value)
    return _condition(option, text, state)


@dataclass(slots=True)
class _Item:
    text: str
    match: Match


class ExportFilter:
    """``keep(obj)``: False when a filter drops the event or alert; ``dropped`` counts per
    filter (the deny item's text, or ``allow``)."""

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = (),
                 state: State | None = None) -> None:
        st = state if state is not None else State(None)
        self.allow = [_Item(t, compile_item("--export-allow", t, st)) for t in allow]
        self.deny = [_Item(t, compile_item("--export-deny", t, st)) for t in deny]
        self.dropped: dict[str, int] = {i.text: 0 for i in self.deny}
        if self.allow:
            self.dropped["allow"] = 0

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def keep(self, e: dict[str, Any]) -> bool:
        for item in self.deny:
            if item.match(e):
                self.dropped[item.text] += 1
                return False
        if self.allow:
            for item in self.allow:
                if item.match(e):
                    return True
            self.dropped["allow"] += 1
            return False
        return True
