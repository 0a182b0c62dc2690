"""Falco rule files -> moray's rule language (`moray agent rules import`).

Data: the Falco items of every file given, applied in file order the way Falco loads them
(`list` / `macro` / `rule` by name; a redefinition replaces; `append: true` and `override:
{key: append|replace}` change an earlier item); then every rule is translated with its
macros expanded and its lists inlined, its `exceptions` turned into `and not (...)`.

Never wider than Falco: each Falco comparison maps to an exact moray one (the table in
docs/falco.md, "Falco rules in") or is *unsupported* (a field moray has no equivalent of, an
operator it lacks, an event type it does not observe). An unsupported comparison is
replaced by the constant that can only narrow the rule: false where it is not negated,
true under `not`. A rule that folds to false (its unsupported part could not be dropped) is
skipped; one that still has a condition is kept with the dropped parts listed. Every
skipped rule, macro and list is reported by name with its reasons: nothing is dropped
silently. The output is checked by moray's own rule compiler before it is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from moray.agent.detect.lang import ConditionError, Tok, tokenize
from moray.agent.detect.load import DEFAULT_RULES, load_texts
from moray.agent.detect.model import RuleError
from moray.errors import ConfigError

# Falco evt.type -> a moray condition for it (open family, exec, ... and the syscalls
# moray's kernel side observes: bpf/progs/syscalls_obs.bpf.c).
_SYSCALLS = ("ptrace", "mount", "umount2", "unshare", "setns", "memfd_create", "init_module",
             "finit_module", "chmod", "fchmod", "fchmodat", "fchmodat2", "setxattr",
             "lsetxattr", "fsetxattr", "link", "linkat", "symlink", "symlinkat", "unlink",
             "unlinkat", "rename", "renameat", "renameat2", "socket", "dup2", "dup3",
             "process_vm_readv", "process_vm_writev", "utimensat")
EVENT_TYPES: dict[str, str] = {
    "open": "evt.type = open", "openat": "evt.type = open", "openat2": "evt.type = open",
    "creat": "evt.type = open", "execve": "evt.type = exec", "execveat": "evt.type = exec",
    "connect": "evt.type = connect", "accept": "evt.type = accept",
    "accept4": "evt.type = accept", "listen": "evt.type = listen",
    "clone": "evt.type = fork", "clone3": "evt.type = fork", "fork": "evt.type = fork",
    "vfork": "evt.type = fork", "procexit": "evt.type = exit",
    **{s: f"(evt.type = syscall and syscall.name = {s})" for s in _SYSCALLS},
}

# Falco field -> moray field, same meaning and values for every operator.
FIELD_MAP: dict[str, str] = {
    "proc.name": "proc.name", "proc.pname": "parent.name", "proc.aname": "proc.anames",
    "proc.exepath": "proc.binary", "proc.pexepath": "parent.binary",
    "proc.args": "proc.args_line", "proc.cmdline": "proc.name_cmdline",
    "proc.pcmdline": "parent.name_cmdline", "proc.pid": "proc.pid",
    "proc.exe": "proc.first_arg", "proc.pexe": "parent.first_arg",
    "fd.name": "file.path", "fd.directory": "file.directory", "fd.filename": "file.name",
    "container.name": "container.name", "container.image": "container.image",
}
# in output templates only (a display value, not compared)
OUTPUT_MAP: dict[str, str] = {**FIELD_MAP, "evt.type": "evt.type", "container.id": "container.id",
                              "container.image.repository": "container.image",
                              "proc.cwd": "proc.cwd", "user.uid": "proc.uid",
                              "evt.res": "syscall.error",
                              "evt.arg.request": "syscall.request"}
OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
       "in": "in", "intersects": "in", "pmatch": "pmatch", "startswith": "startswith",
       "endswith": "endswith", "contains": "contains", "icontains": "icontains",
       "glob": "glob", "regex": "regex"}
FALCO_OPS = frozenset(OPS) | {"exists", "bcontains", "bstartswith", "iglob"}
PRIORITIES = {"EMERGENCY": "EMERGENCY", "ALERT": "ALERT", "CRITICAL": "CRITICAL",
              "ERROR": "ERROR", "WARNING": "WARNING", "NOTICE": "NOTICE",
              "INFORMATIONAL": "INFORMATIONAL", "INFO": "INFORMATIONAL", "DEBUG": "DEBUG"}
_WORD = re.compile(r"^[A-Za-z0-9_./:+@\-\[\]*]+$")


class Unsupported(ConfigError):
    """One comparison moray cannot express (the message is the reason shown to the user)."""


@dataclass(slots=True)
class Skipped:
    kind: str   # rule | macro | list | item
    name: str
    reasons: list[str]


@dataclass(slots=True)
class Report:
    translated: list[str] = field(default_factory=list)
    narrowed: dict[str, list[str]] = field(default_factory=dict)  # kept, parts dropped
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"note: {n}" for n in self.notes]
        for s in self.skipped:
            out.append(f"skipped {s.kind} {s.name!r}: {'; '.join(s.reasons)}")
        for name, why in self.narrowed.items():
            out.append(f"translated rule {name!r} without: {'; '.join(why)} "
                       "(narrower than in Falco, never wider)")
        rules = [s for s in self.skipped if s.kind == "rule"]
        out.append(f"{len(self.translated)} rules translated, {len(rules)} skipped "
                   f"({len(self.narrowed)} of the translated ones narrowed); "
                   f"{len(self.skipped) - len(rules)} macros/lists/items not translatable")
        return out


@dataclass(slots=True)
class _Item:
    kind: str
    name: str
    body: dict[str, Any]
    src: str


# --------------------------------------------------------------------------- loading

class _YamlLoader(yaml.SafeLoader):
    """PyYAML reads a bare `=` as the YAML 1.1 value tag; Falco files write `comps: [=, in]`."""


_YamlLoader.add_constructor("tag:yaml.org,2002:value",
                            lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]

def _strip(v: Any) -> str:
    s = str(v)
    if len(s) >= 2 and s[0] == s[-1] == '"':   # a quoted item: Falco reads its escapes
        s = re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


class _Falco:
    """The Falco items of every file, merged in order (Falco's own load semantics)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.lists: dict[str, list[str]] = {}
        self.macros: dict[str, str] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.src: dict[tuple[str, str], str] = {}

    def load(self, text: str, name: str) -> None:
        try:
            doc = yaml.load(text, Loader=_YamlLoader)  # a SafeLoader
        except yaml.YAMLError as err:
            self.report.skipped.append(Skipped("item", name, [f"not YAML: {err}"]))
            return
        if doc is None:
            return
        if not isinstance(doc, list):
            self.report.skipped.append(Skipped("item", name, ["not a list of Falco items"]))
            return
        for i, it in enumerate(doc):
            where = f"{name}[{i}]"
            if not isinstance(it, dict):
                self.report.skipped.append(Skipped("item", where, ["not a mapping"]))
            elif "list" in it:
                self._list(it, where)
            elif "macro" in it:
                self._macro(it, where)
            elif "rule" in it:
                self._rule(it, where)
            elif "required_engine_version" in it:
                self.report.notes.append(f"{name}: required_engine_version "
                                         f"{it['required_engine_version']} (not needed)")
            elif "required_plugin_versions" in it:
                self.report.notes.append(f"{name}: required_plugin_versions ignored "
                                         "(moray has no Falco plugins)")
            else:
                self.report.skipped.append(Skipped("item", where,
                                                   [f"unknown item keys {sorted(it)}"]))

    @staticmethod
    def _mode(it: dict[str, Any], key: str) -> str:
        ov = it.get("override")
        if isinstance(ov, dict) and key in ov:
            return str(ov[key])
        return "append" if it.get("append") is True else "replace"

    def _list(self, it: dict[str, Any], where: str) -> None:
        name = str(it["list"])
        items = [_strip(x) for x in (it.get("items") or [])]
        if self._mode(it, "items") == "append" and name in self.lists:
            self.lists[name] = self.lists[name] + items
        elif self._mode(it, "items") == "append":
            self.report.skipped.append(Skipped("list", name, [
                f"{where}: appends to a list not defined before"]))
        else:
            self.lists[name] = items

    def _macro(self, it: dict[str, Any], where: str) -> None:
        name = str(it["macro"])
        cond = str(it.get("condition", "")).strip()
        if self._mode(it, "condition") == "append":
            if name not in self.macros:
                self.report.skipped.append(Skipped("macro", name, [
                    f"{where}: appends to a macro not defined before"]))
                return
            self.macros[name] = f"{self.macros[name]} {cond}"
        else:
            self.macros[name] = cond

    def _rule(self, it: dict[str, Any], where: str) -> None:
        name = str(it["rule"])
        ov = it.get("override")
        appending = it.get("append") is True or isinstance(ov, dict)
        if set(it) <= {"rule", "enabled"} and name in self.rules:
            self.rules[name]["enabled"] = it.get("enabled", True)  # Falco's enable/disable
            return
        if not appending:
            self.rules[name] = dict(it)
            self.src[("rule", name)] = where
            return
        old = self.rules.get(name)
        if old is None:
            self.report.skipped.append(Skipped("rule", name, [
                f"{where}: appends to / overrides a rule not defined before"]))
            return
        keys = (ov.keys() if isinstance(ov, dict) else
                [k for k in it if k not in ("rule", "append")])
        for k in keys:
            if k not in it:
                continue
            mode = self._mode(it, k)
            if mode == "append" and k == "condition":
                old[k] = f"{old.get(k, '')} {it[k]}"
            elif mode == "append" and k == "exceptions":
                old[k] = _merge_exceptions(old.get(k) or [], it[k] or [])
            elif mode == "append" and isinstance(it[k], list):
                old[k] = list(old.get(k) or []) + list(it[k])
            elif mode == "append" and k in ("output", "desc"):
                old[k] = f"{old.get(k, '')} {it[k]}"
            else:
                old[k] = it[k]


def _merge_exceptions(old: list[Any], new: list[Any]) -> list[Any]:
    out = [dict(e) for e in old if isinstance(e, dict)]
    by = {e.get("name"): e for e in out}
    for e in new:
        if not isinstance(e, dict):
            continue
        if e.get("name") in by and "fields" not in e:
            prev = by[e.get("name")]
            prev["values"] = list(prev.get("values") or []) + list(e.get("values") or [])
        else:
            out.append(dict(e))
            by[e.get("name")] = out[-1]
    return out


# --------------------------------------------------------------------------- parsing

@dataclass(frozen=True, slots=True)
class FCmp:
    field: str
    op: str
    values: tuple[str, ...]
    is_list: bool


@dataclass(frozen=True, slots=True)
class FBool:
    op: str   # and | or
    items: tuple[FNode, ...]


@dataclass(frozen=True, slots=True)
class FNot:
    item: FNode


@dataclass(frozen=True, slots=True)
class FMacro:
    name: str
    item: FNode


FNode = FCmp | FBool | FNot | FMacro


# A hostile or broken file cannot make one rule expand without bound: macros that use
# each other twice per level, lists that name each other (each use costs its size).
MAX_EXPANSION = 20_000
MAX_DEPTH = 64


class _Parser:
    """Falco's condition grammar, macros expanded (cycle-checked), lists inlined."""

    def __init__(self, falco: _Falco, stack: tuple[str, ...] = (),
                 budget: list[int] | None = None) -> None:
        self.f = falco
        self.stack = stack
        self.budget = budget if budget is not None else [MAX_EXPANSION]
        self.depth = 0

    def _spend(self, n: int, pos: int) -> None:
        self.budget[0] -= n
        if self.budget[0] < 0:
            raise ConditionError(f"expands to more than {MAX_EXPANSION} comparisons and list "
                                 "items (macros or lists that multiply)", pos)

    def parse(self, text: str) -> FNode:
        if len(self.stack) > MAX_DEPTH:
            raise ConditionError(f"macros nested more than {MAX_DEPTH} deep")
        self.toks = tokenize(text)
        self.i = 0
        node = self._or()
        if self.toks[self.i].kind != "end":
            raise ConditionError(f"unexpected {self.toks[self.i].text!r}", self.toks[self.i].pos)
        return node

    def _peek(self) -> Tok:
        return self.toks[self.i]

    def _next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def _bool(self, op: str, sub: Any) -> FNode:
        items = [sub()]
        while self._peek().kind == "word" and self._peek().text == op:
            self._next()
            items.append(sub())
        return items[0] if len(items) == 1 else FBool(op, tuple(items))

    def _or(self) -> FNode:
        return self._bool("or", self._and)

    def _and(self) -> FNode:
        return self._bool("and", self._unary)

    def _unary(self) -> FNode:
        t = self._next()
        self._spend(1, t.pos)
        if t.kind == "word" and t.text == "not":
            return FNot(self._nested())
        if t.kind == "punct" and t.text == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ConditionError(f"parentheses nested more than {MAX_DEPTH} deep", t.pos)
            node = self._or()
            self.depth -= 1
            if self._next().text != ")":
                raise ConditionError("missing ')'", t.pos)
            return node
        if t.kind != "word":
            raise ConditionError(f"expected a field or macro, got {t.text or 'the end'!r}",
                                 t.pos)
        nxt = self._peek()
        is_op = nxt.kind == "op" or (nxt.kind == "word" and nxt.text in FALCO_OPS)
        if not is_op:
            return self._macro(t)
        op = self._next().text
        if op == "=" and self._peek().kind == "op" and self._peek().text == "=":
            self._next()
            op = "=="
        if op == "exists":
            return FCmp(t.text, "exists", (), False)
        values, is_list = self._value()
        self._spend(len(values), t.pos)
        return FCmp(t.text, op, values, is_list)

    def _nested(self) -> FNode:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError(f"'not' nested more than {MAX_DEPTH} deep")
        node = self._unary()
        self.depth -= 1
        return node

    def _macro(self, t: Tok) -> FNode:
        name = t.text
        if name in self.stack:
            raise ConditionError(f"macro {name!r} refers to itself")
        if name not in self.f.macros:
            raise ConditionError(f"undefined macro {name!r}", t.pos)
        try:
            sub = _Parser(self.f, (*self.stack, name), self.budget)
            return FMacro(name, sub.parse(self.f.macros[name]))
        except ConditionError as err:
            raise ConditionError(f"in macro {name!r}: {err}") from err

    def _expand(self, name: str, seen: tuple[str, ...] = ()) -> list[str]:
        out: list[str] = []
        for x in self.f.lists[name]:
            if x in self.f.lists and x not in seen and x != name:
                out.extend(self._expand(x, (*seen, name)))
            else:
                out.append(x)
            self._spend(1, 0)
        return out

    def _value(self) -> tuple[tuple[str, ...], bool]:
        if self._peek().kind == "punct" and self._peek().text == "(":
            self._next()
            items: list[str] = []
            if self._peek().text == ")":
                self._next()
                return (), True
            while True:
                t = self._next()
                if t.kind == "word" and t.text in self.f.lists:
                    items.extend(self._expand(t.text))
                elif t.kind in ("word", "str", "op"):
                    items.append(t.text)
                else:
                    raise ConditionError(f"expected a value, got {t.text!r}", t.pos)
                sep = self._next()
                if sep.text == ")":
                    return tuple(items), True
                if sep.text != ",":
                    raise ConditionError("expected ',' or ')' in a list", sep.pos)
        t = self._next()
        if t.kind not in ("word", "str", "op"):
            raise ConditionError(f"expected a value, got {t.text or 'the end'!r}", t.pos)
        if t.kind == "word" and t.text in self.f.lists:
            return tuple(self._expand(t.text)), True
        return (t.text,), False


# --------------------------------------------------------------------------- translating

def _q(v: str) -> str:
    if _WORD.match(v) and v not in ("and", "or", "not", "in", "exists"):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _vals(vals: Iterable[str]) -> str:
    return "(" + ", ".join(_q(v) for v in vals) + ")"


def _or(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def _cmp_text(field_: str, op: str, values: tuple[str, ...], is_list: bool) -> str:
    if op == "exists":
        return f"{field_} exists"
    if is_list or op == "in":
        if op in ("=", "=="):
            op = "in"
        return f"{field_} {OPS[op]} {_vals(values)}"
    return f"{field_} {OPS[op]} {_q(values[0])}"


def _evt_type(c: FCmp) -> str | bool:
    if c.op in ("=", "==", "in"):
        if not c.values:
            return False
        parts: list[str] = []
        missing: list[str] = []
        for v in c.values:
            m = EVENT_TYPES.get(v)
            if m is None:
                missing.append(v)
            elif m not in parts:
                parts.append(m)
        if missing:
            # split: the observed types translate, the others are each unsupported
            raise _Partial(parts, [f"event type {v} not observed by moray" for v in missing])
        return _or(parts)
    if c.op == "!=" and len(c.values) == 1:
        m = EVENT_TYPES.get(c.values[0])
        if m is None:
            raise Unsupported(f"event type {c.values[0]} not observed by moray")
        return f"not {m}"
    raise Unsupported(f"unsupported operator {c.op} on evt.type")


class _Partial(Unsupported):
    """An `or` of translated parts and unsupported ones (evt.type in (open, dup, ...))."""

    def __init__(self, parts: list[str], reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.parts = parts
        self.reasons = reasons


def _bool_field(c: FCmp, true_text: str, false_text: str) -> str:
    if c.op in ("=", "==") and c.values[0] in ("true", "false"):
        return true_text if c.values[0] == "true" else false_text
    if c.op == "!=" and c.values[0] in ("true", "false"):
        return false_text if c.values[0] == "true" else true_text
    raise Unsupported(f"unsupported comparison {c.field} {c.op} {' '.join(c.values)}")


def _cwd(c: FCmp) -> str:
    """Falco's proc.cwd ends with '/' (moray's does not, except for '/' itself)."""
    op, vals = c.op, c.values
    if op == "startswith" and vals[0].endswith("/"):
        v = vals[0]
        exact = v.rstrip("/") or "/"
        return f"(proc.cwd startswith {_q(v)} or proc.cwd = {_q(exact)})"
    if op in ("=", "==", "in") and all(v.endswith("/") for v in vals) and vals:
        return f"proc.cwd in {_vals([v.rstrip('/') or '/' for v in vals])}"
    raise Unsupported(f"unsupported comparison proc.cwd {op} {' '.join(vals)} (Falco's "
                      "proc.cwd ends with '/'; only = / in / startswith of such values map)")


def map_cmp(c: FCmp) -> str | bool:
    """One Falco comparison -> moray condition text (or a constant); Unsupported if none."""
    f, op, vals = c.field, c.op, c.values
    if op not in OPS and op != "exists":
        raise Unsupported(f"unsupported operator {op} (on {f})")
    if f == "evt.type":
        return _evt_type(c)
    if f == "evt.dir":
        return True   # moray reports each call once, after it completed: both directions
    if f == "evt.num" and op in ("=", "==") and vals == ("0",):
        return False  # Falco's never_true: event numbers start at 1
    if op == "!=" and vals == ("<NA>",) and f in FIELD_MAP:
        return f"{FIELD_MAP[f]} exists"
    if f == "container.id":
        if vals == ("host",) and op in ("=", "==", "!="):
            return "container.id exists" if op == "!=" else "not container.id exists"
        raise Unsupported("unsupported field container.id (other than = / != host)")
    if f == "container.image.repository":
        if op not in ("=", "==", "in"):
            raise Unsupported(f"unsupported operator {op} on container.image.repository")
        if not vals:
            return False
        rx = "^(" + "|".join(re.escape(v) for v in vals) + r")(:[^/]*|@.*)?$"
        return f"container.image regex {_q(rx)}"
    if f == "evt.is_open_read":
        return _bool_field(c, "file.access in (read, read-write)",
                           "not file.access in (read, read-write)")
    if f == "evt.is_open_write":
        return _bool_field(c, "file.access in (write, read-write)",
                           "not file.access in (write, read-write)")
    if f == "fd.num":
        if (op, vals) in ((">=", ("0",)), ("!=", ("-1",))):
            return "file.failed = false"
        if (op, vals) in (("=", ("-1",)), ("==", ("-1",)), ("<", ("0",))):
            return "file.failed = true"
        raise Unsupported(f"unsupported field fd.num (other than >= 0 / = -1): {op} {vals}")
    if f == "evt.failed":
        return _bool_field(c, "(file.failed = true or syscall.failed = true)",
                           "(file.failed = false or syscall.failed = false)")
    if f == "evt.res":
        if op == "startswith" and vals == ("E",):
            return "(file.failed = true or syscall.failed = true)"
        if op in ("=", "==") and vals == ("SUCCESS",):
            return "(file.failed = false or syscall.failed = false)"
        if op in ("=", "==", "in") and vals and all(re.match(r"^E[A-Z0-9]+$", v) for v in vals):
            return f"(file.error in {_vals(vals)} or syscall.error in {_vals(vals)})"
        raise Unsupported(f"unsupported comparison evt.res {op} {' '.join(vals)}")
    if f == "proc.cwd":
        return _cwd(c)
    if f == "evt.arg.flags" and op == "contains" and re.match(r"^O_[A-Z]+$", vals[0]):
        return f"file.flags = {vals[0]}"
    if f == "evt.arg.request" and op == "contains" and re.match(r"^PTRACE_[A-Z]+$", vals[0]):
        return f"syscall.request = {vals[0]}"
    target = FIELD_MAP.get(f)
    if target is None:
        raise Unsupported(f"unsupported field {f}")
    if op != "exists" and not vals:
        return False   # `in ()`: Falco matches nothing
    return _cmp_text(target, op, vals, c.is_list)


class _Translator:
    """Falco AST -> moray text; records every unsupported part (with its macro path)."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def run(self, node: FNode, positive: bool = True, via: str = "") -> str | bool:
        if isinstance(node, FMacro):
            return self.run(node.item, positive, f"{via}{node.name}: ")
        if isinstance(node, FNot):
            x = self.run(node.item, not positive, via)
            return (not x) if isinstance(x, bool) else f"not {x}"
        if isinstance(node, FBool):
            return self._bool(node, positive, via)
        try:
            return map_cmp(node)
        except _Partial as p:
            self.dropped.extend(f"{via}{r}" for r in p.reasons)
            if not positive or not p.parts:
                return not positive
            return _or(p.parts)
        except Unsupported as err:
            self.dropped.append(f"{via}{err}")
            return not positive   # narrowing: false where asserted, true under `not`

    def _bool(self, node: FBool, positive: bool, via: str) -> str | bool:
        is_and = node.op == "and"
        kept: list[str] = []
        for it in node.items:
            x = self.run(it, positive, via)
            if isinstance(x, bool):
                if x is not is_and:
                    return x
                continue
            kept.append(x)
        if not kept:
            return is_and
        if len(kept) == 1:
            return kept[0]
        return "(" + f" {node.op} ".join(kept) + ")"


def _exception_text(falco: _Falco, rule: str, exc: dict[str, Any]) -> str | None:
    """One Falco exception -> Falco condition text (None: it has no values, matches
    nothing)."""
    fields = exc.get("fields")
    comps = exc.get("comps")
    values = exc.get("values") or []
    if not values:
        return None
    if isinstance(fields, str):
        comp = comps if isinstance(comps, str) else "in"
        vals = ", ".join(_q(_strip(v)) for v in values)
        return f"{fields} {comp} ({vals})"
    if not isinstance(fields, list):
        raise ConditionError(f"exception {exc.get('name')!r}: fields must be a list")
    comps_l = comps if isinstance(comps, list) else ["="] * len(fields)
    alts = []
    for tup in values:
        if not isinstance(tup, list) or len(tup) != len(fields):
            raise ConditionError(f"exception {exc.get('name')!r}: each value must list "
                                 f"{len(fields)} items")
        parts = []
        for fld, cmp_, v in zip(fields, comps_l, tup, strict=True):
            if isinstance(v, list):
                parts.append(f"{fld} {cmp_} ({', '.join(_q(_strip(x)) for x in v)})")
            elif cmp_ in ("in", "intersects", "pmatch") and str(v) in falco.lists:
                parts.append(f"{fld} {cmp_} ({v})")
            else:
                parts.append(f"{fld} {cmp_} {_q(_strip(v))}")
        alts.append("(" + " and ".join(parts) + ")")
    return " or ".join(alts)


_OUT = re.compile(r"([\w.\[\]-]+=)?%([a-zA-Z_]+\.[a-zA-Z_.]+(?:\[[0-9]+\])?)")


def _output(text: str) -> str:
    """Falco output -> moray output: mapped fields renamed, key=%field pairs of fields moray
    does not have left out (never a placeholder)."""
    def sub(m: re.Match[str]) -> str:
        f = m.group(2)
        if f == "container.info":
            return "container=%container.name image=%container.image"
        target = OUTPUT_MAP.get(f)
        if target is None:
            return ""
        return f"{m.group(1) or ''}%{target}"
    out = _OUT.sub(sub, " ".join(text.split()))
    out = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", re.sub(r"\s{2,}", " ", out)))
    return out.replace("()", "").strip()


@dataclass(slots=True)
class Result:
    rules: list[dict[str, Any]]
    report: Report

    def yaml(self, sources: Sequence[str] = ()) -> str:
        """The moray rule file, headed by the report as comments (what was left out)."""
        head = ["# moray detection rules translated from Falco rules "
                "(moray agent rules import)"]
        head += [f"#   from {s}" for s in sources]
        head += ["# " + " ".join(line.split()) for line in self.report.lines()]
        body = yaml.safe_dump(self.rules, sort_keys=False, width=100, allow_unicode=True)
        return "\n".join(head) + "\n" + (body if self.rules else "[]\n")


def translate_texts(texts: Sequence[tuple[str, str]]) -> Result:
    """(file name, Falco YAML text) pairs, in load order -> moray rules + the report."""
    report = Report()
    falco = _Falco(report)
    for name, text in texts:
        falco.load(text, name)
    _check_macros(falco, report)
    rules: list[dict[str, Any]] = []
    for name, r in falco.rules.items():
        out = _rule(falco, name, r, report)
        if out is not None:
            rules.append(out)
    rules = _validate(rules, report)
    report.translated = [str(r["rule"]) for r in rules]
    defaults = _default_rule_names()
    for name in report.translated:
        if name in defaults:
            report.notes.append(f"rule {name!r} has the name of a moray default rule: "
                                "loaded after the defaults, it replaces that rule")
    return Result(rules, report)


def _default_rule_names() -> frozenset[str]:
    doc = yaml.safe_load(DEFAULT_RULES.read_text()) or []
    return frozenset(str(it["rule"]) for it in doc if isinstance(it, dict) and "rule" in it)


def _check_macros(falco: _Falco, report: Report) -> None:
    """Report every macro that cannot be translated on its own (it may still be usable
    inside a rule, where its unsupported part can sometimes be dropped)."""
    for name, text in falco.macros.items():
        try:
            node = _Parser(falco, (name,)).parse(text)
        except RecursionError:
            report.skipped.append(Skipped("macro", name, ["nested too deeply"]))
            continue
        except ConditionError as err:
            report.skipped.append(Skipped("macro", name, [f"does not parse: {err}"]))
            continue
        tr = _Translator()
        try:
            tr.run(node)
        except RecursionError:
            report.skipped.append(Skipped("macro", name, ["nested too deeply"]))
            continue
        if tr.dropped:
            report.skipped.append(Skipped("macro", name, sorted(set(tr.dropped))))


def _rule(falco: _Falco, name: str, r: dict[str, Any],
          report: Report) -> dict[str, Any] | None:
    src = r.get("source", "syscall")
    if src != "syscall":
        report.skipped.append(Skipped("rule", name, [
            f"source {src} not observed by moray (only syscall events)"]))
        return None
    cond = str(r.get("condition") or "").strip()
    if not cond:
        report.skipped.append(Skipped("rule", name, ["no condition"]))
        return None
    try:
        parts = [f"({cond})"]
        for exc in r.get("exceptions") or []:
            if not isinstance(exc, dict):
                raise ConditionError("an exception is not a mapping")
            t = _exception_text(falco, name, exc)
            if t is not None:
                parts.append(f"not ({t})")
        node = _Parser(falco).parse(" and ".join(parts))
    except RecursionError:
        report.skipped.append(Skipped("rule", name, ["nested too deeply"]))
        return None
    except ConditionError as err:
        report.skipped.append(Skipped("rule", name, [f"does not parse: {err}"]))
        return None
    tr = _Translator()
    try:
        text = tr.run(node)
    except RecursionError:
        report.skipped.append(Skipped("rule", name, ["nested too deeply"]))
        return None
    dropped = sorted(set(tr.dropped))
    if text is False:
        report.skipped.append(Skipped("rule", name, dropped or ["condition is never true"]))
        return None
    if text is True:
        report.skipped.append(Skipped("rule", name, [
            "condition would match every event once its unsupported parts are dropped",
            *dropped]))
        return None
    if dropped:
        report.narrowed[name] = dropped
    prio = PRIORITIES.get(str(r.get("priority", "WARNING")).strip().upper(), "WARNING")
    out: dict[str, Any] = {"rule": name}
    if r.get("desc"):
        out["desc"] = " ".join(str(r["desc"]).split())
    out["condition"] = text
    out["output"] = _output(str(r.get("output") or name))
    out["priority"] = prio
    tags = [str(t) for t in (r.get("tags") or [])]
    if tags:
        out["tags"] = tags
    if r.get("enabled") is False:
        out["enabled"] = False
    return out


def _validate(rules: list[dict[str, Any]], report: Report) -> list[dict[str, Any]]:
    """Keep only rules moray's compiler accepts; a refused one is reported with why."""
    ok: list[dict[str, Any]] = []
    for r in rules:
        try:
            load_texts([("falco-import", yaml.safe_dump([r], sort_keys=False))])
        except RuleError as err:
            why = "; ".join(p.message for p in err.problems)
            report.narrowed.pop(str(r["rule"]), None)
            report.skipped.append(Skipped("rule", str(r["rule"]), [
                f"moray's rule compiler refused the translation: {why}"]))
            continue
        ok.append(r)
    return ok


def translate_files(paths: Sequence[str]) -> Result:
    texts = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            texts.append((p, fh.read()))
    return translate_texts(texts)
