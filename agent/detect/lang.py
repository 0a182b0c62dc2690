"""Rule conditions: text -> AST -> one Python closure per rule (no per-event parsing).

Grammar (Falco-like, so rules read familiar to security teams):

    expr    := or
    or      := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | "(" expr ")" | MACRO | FIELD OP value | FIELD "exists"
    value   := scalar | "(" item ("," item)* ")"      items may name a list (expanded)
    OP      := = != < <= > >= in startswith endswith contains icontains glob pmatch
               regex cidr

A list field (proc.args, proc.anames, ...) matches when any element does. A field absent
from the event matches nothing (`!=` matches). Errors name the rule and the position:
`unknown field 'proc.nmae' (did you mean proc.name?)`.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moray.agent.detect.ctx import Ctx
from moray.agent.detect.fields import BOOL, EVENT_TYPES, FIELDS, INT, LIST, STR, Field
from moray.errors import ConfigError

Pred = Callable[[Ctx], bool]

OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "startswith", "endswith", "contains",
       "icontains", "glob", "pmatch", "regex", "cidr")
WORD_OPS = frozenset(o for o in OPS if o.isalpha()) | {"exists"}
STR_OPS = frozenset({"startswith", "endswith", "contains", "icontains", "glob", "pmatch",
                     "regex", "cidr"})
INT_OPS = frozenset({"<", "<=", ">", ">="})


class ConditionError(ConfigError, ValueError):
    def __init__(self, message: str, pos: int | None = None) -> None:
        self.pos = pos
        super().__init__(message if pos is None else f"{message} (at column {pos + 1})")


# --------------------------------------------------------------------------- tokens

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|!=|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[^\s(),=<>!"']+)
    )""", re.VERBOSE)


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str   # str | op | punct | word | end
    text: str
    pos: int


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ConditionError(f"unexpected character {text[pos:].lstrip()[:1]!r}", pos)
        kind = m.lastgroup or "word"
        raw = m.group(kind)
        start = m.start(kind)
        if kind == "str":
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        out.append(Tok(kind, raw, start))
        pos = m.end()
    out.append(Tok("end", "", n))
    return out


# --------------------------------------------------------------------------- AST

@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class Cmp:
    field: Field
    op: str
    values: tuple[str, ...]   # one for scalar comparisons
    is_list: bool             # written as a parenthesised list


Node = And | Or | Not | Cmp


class Parser:
    """Parses one condition; macros are parsed (and cycle-checked) on first use."""

    def __init__(self, macros: Mapping[str, str], lists: Mapping[str, Sequence[str]],
                 parsed: dict[str, Node] | None = None,
                 stack: tuple[str, ...] = ()) -> None:
        self.macros = macros
        self.lists = lists
        self.parsed = parsed if parsed is not None else {}
        self.stack = stack

    def parse(self, text: str) -> Node:
        self.toks = tokenize(text)
        self.i = 0
        node = self._or()
        t = self.toks[self.i]
        if t.kind != "end":
            raise ConditionError(f"unexpected {t.text!r}", t.pos)
        return node

    def _peek(self) -> Tok:
        return self.toks[self.i]

    def _next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def _or(self) -> Node:
        items = [self._and()]
        while self._peek().kind == "word" and self._peek().text == "or":
            self._next()
            items.append(self._and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _and(self) -> Node:
        items = [self._unary()]
        while self._peek().kind == "word" and self._peek().text == "and":
            self._next()
            items.append(self._unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def _unary(self) -> Node:
        t = self._next()
        if t.kind == "word" and t.text == "not":
            return Not(self._unary())
        if t.kind == "punct" and t.text == "(":
            node = self._or()
            close = self._next()
            if close.text != ")" or close.kind != "punct":
                raise ConditionError("missing ')'", close.pos)
            return node
        if t.kind != "word":
            raise ConditionError(f"expected a field, macro, 'not' or '(' but got "
                                 f"{t.text or 'the end'!r}", t.pos)
        if t.text in self.macros:
            return self._macro(t)
        field = FIELDS.get(t.text)
        if field is None:
            known = list(FIELDS) + list(self.macros)
            similar = difflib.get_close_matches(t.text, known, 1)
            hint = f" (did you mean {similar[0]}?)" if similar else ""
            raise ConditionError(f"unknown field or macro {t.text!r}{hint}", t.pos)
        op = self._next()
        if op.kind == "word" and op.text == "exists":
            return Cmp(field, "exists", (), False)
        if not (op.kind == "op" or (op.kind == "word" and op.text in WORD_OPS)):
            raise ConditionError(f"expected an operator after {field.name} "
                                 f"({', '.join(OPS)}, exists) but got {op.text or 'the end'!r}",
                                 op.pos)
        values, is_list = self._value()
        return _check(Cmp(field, op.text, values, is_list), op.pos)

    def _macro(self, t: Tok) -> Node:
        name = t.text
        if name in self.stack:
            raise ConditionError(f"macro {name!r} refers to itself "
                                 f"({' -> '.join((*self.stack, name))})", t.pos)
        if name not in self.parsed:
            sub = Parser(self.macros, self.lists, self.parsed, (*self.stack, name))
            try:
                self.parsed[name] = sub.parse(self.macros[name])
            except ConditionError as err:
                raise ConditionError(f"in macro {name!r}: {err}") from err
        return self.parsed[name]

    def _scalar(self) -> Tok:
        t = self._next()
        if t.kind not in ("str", "word"):
            raise ConditionError(f"expected a value but got {t.text or 'the end'!r}", t.pos)
        return t

    def _value(self) -> tuple[tuple[str, ...], bool]:
        if self._peek().kind == "punct" and self._peek().text == "(":
            self._next()
            items: list[str] = []
            while True:
                t = self._scalar()
                if t.kind == "word" and t.text in self.lists:
                    items.extend(self.lists[t.text])
                else:
                    items.append(t.text)
                sep = self._next()
                if sep.kind == "punct" and sep.text == ")":
                    break
                if not (sep.kind == "punct" and sep.text == ","):
                    raise ConditionError("expected ',' or ')' in a list", sep.pos)
            return tuple(items), True
        t = self._scalar()
        if t.kind == "word" and t.text in self.lists:
            return tuple(self.lists[t.text]), True
        return (t.text,), False


def _check(c: Cmp, pos: int) -> Cmp:
    f, op = c.field, c.op
    kind = f.kind
    if op in STR_OPS and kind not in (STR, LIST):
        raise ConditionError(f"{op} needs a text field; {f.name} is {kind}", pos)
    if op in INT_OPS and kind != INT:
        raise ConditionError(f"{op} needs a number field; {f.name} is {kind}", pos)
    if op in ("=", "!=", *INT_OPS) and c.is_list:
        raise ConditionError(f"{op} takes one value, not a list (use in)", pos)
    if not c.values:
        raise ConditionError(f"{op} on {f.name}: empty list", pos)
    for v in c.values:
        if kind == INT and op not in STR_OPS:
            try:
                int(v, 0)
            except ValueError:
                raise ConditionError(f"{f.name} is a number; {v!r} is not", pos) from None
        if kind == BOOL and v not in ("true", "false"):
            raise ConditionError(f"{f.name} is true or false; {v!r} is neither", pos)
        if f.name == "evt.type" and v not in EVENT_TYPES:
            raise ConditionError(f"unknown event type {v!r} (one of "
                                 f"{', '.join(sorted(EVENT_TYPES))})", pos)
        if op == "regex":
            try:
                re.compile(v)
            except re.error as err:
                raise ConditionError(f"bad regex {v!r}: {err}", pos) from None
        if op == "cidr":
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ConditionError(f"bad CIDR {v!r}", pos) from None
    return c


# --------------------------------------------------------------------------- types

def event_types(node: Node) -> frozenset[str] | None:
    """Event types a condition can match (None: any). Positive conjuncts restrict."""
    if isinstance(node, Cmp):
        if node.field.name == "evt.type" and node.op in ("=", "in"):
            return frozenset(node.values)
        if node.op == "!=":
            return None
        return node.field.types
    if isinstance(node, And):
        acc: frozenset[str] | None = None
        for it in node.items:
            t = event_types(it)
            if t is not None:
                acc = t if acc is None else acc & t
        return acc
    if isinstance(node, Or):
        acc2: frozenset[str] = frozenset()
        for it in node.items:
            t = event_types(it)
            if t is None:
                return None
            acc2 |= t
        return acc2
    return None


def node_fields(node: Node) -> frozenset[str]:
    """Names of every field a condition reads."""
    if isinstance(node, Cmp):
        return frozenset((node.field.name,))
    if isinstance(node, Not):
        return node_fields(node.item)
    out: frozenset[str] = frozenset()
    for it in node.items:
        out |= node_fields(it)
    return out


def field_values(node: Node, name: str, etype: str) -> frozenset[str] | None:
    """Values a field must take for the condition to match an event of type etype (None:
    unconstrained), from positive `=` / `in` tests on it: e.g. syscall.name, to
    sub-index syscall rules. Or-branches that cannot match etype are ignored."""
    if isinstance(node, Cmp):
        if node.field.name == name and node.op in ("=", "in"):
            return frozenset(node.values)
        return None
    if isinstance(node, And):
        acc: frozenset[str] | None = None
        for it in node.items:
            t = field_values(it, name, etype)
            if t is not None:
                acc = t if acc is None else acc & t
        return acc
    if isinstance(node, Or):
        acc2: frozenset[str] = frozenset()
        for it in node.items:
            types = event_types(it)
            if types is not None and etype not in types:
                continue
            t = field_values(it, name, etype)
            if t is None:
                return None
            acc2 |= t
        return acc2
    return None


def fields_of(node: Node) -> set[str]:
    if isinstance(node, Cmp):
        return {node.field.name}
    if isinstance(node, Not):
        return fields_of(node.item)
    out: set[str] = set()
    for it in node.items:
        out |= fields_of(it)
    return out


# --------------------------------------------------------------------------- compile

def _value_pred(op: str, vals: tuple[str, ...], kind: str) -> Callable[[Any], bool]:
    if kind == INT and op not in STR_OPS:
        nums = tuple(int(v, 0) for v in vals)
        n = nums[0]
        if op == "=":
            return lambda v: v == n
        if op == "!=":
            return lambda v: v != n
        if op == "in":
            s = frozenset(nums)
            return lambda v: v in s
        return {"<": lambda v: v < n, "<=": lambda v: v <= n,
                ">": lambda v: v > n, ">=": lambda v: v >= n}[op]
    if kind == BOOL:
        b = vals[0] == "true"
        if op == "!=":
            return lambda v: v != b
        bs = frozenset(x == "true" for x in vals)
        return lambda v: v in bs
    if kind == LIST and op in ("=", "!="):
        # list fields compare per element with = (any element equal)
        x = vals[0]
        return (lambda v: v == x) if op == "=" else (lambda v: v != x)
    x = vals[0]
    if op == "=":
        return lambda v: v == x
    if op == "!=":
        return lambda v: v != x
    if op == "in":
        s2 = frozenset(vals)
        return lambda v: v in s2
    if op == "startswith":
        t = tuple(vals)
        return lambda v: isinstance(v, str) and v.startswith(t)
    if op == "endswith":
        t2 = tuple(vals)
        return lambda v: isinstance(v, str) and v.endswith(t2)
    if op == "contains":
        if len(vals) == 1:
            return lambda v: isinstance(v, str) and x in v
        return lambda v: isinstance(v, str) and any(s in v for s in vals)
    if op == "icontains":
        low = tuple(s.lower() for s in vals)
        return lambda v: isinstance(v, str) and any(s in v.lower() for s in low)
    if op in ("glob", "regex"):
        pat = "|".join(f"(?:{fnmatch.translate(v) if op == 'glob' else v})" for v in vals)
        rx = re.compile(pat)
        if op == "glob":
            return lambda v: isinstance(v, str) and rx.match(v) is not None
        return lambda v: isinstance(v, str) and rx.search(v) is not None
    if op == "pmatch":
        exact = frozenset(v.rstrip("/") or "/" for v in vals)
        prefixes = tuple((v.rstrip("/") + "/") for v in vals)
        return lambda v: isinstance(v, str) and (v in exact or v.startswith(prefixes))
    if op == "cidr":
        nets = tuple(ipaddress.ip_network(v, strict=False) for v in vals)
        cache: dict[str, bool] = {}

        def in_nets(v: Any) -> bool:
            if not isinstance(v, str):
                return False
            hit = cache.get(v)
            if hit is None:
                try:
                    a = ipaddress.ip_address(v)
                    hit = any(a.version == n.version and a in n for n in nets)
                except ValueError:
                    hit = False
                if len(cache) > 65536:
                    cache.clear()
                cache[v] = hit
            return hit
        return in_nets
    raise ConditionError(f"operator {op} is not supported")


def prune_type_tests(node: Node, types: frozenset[str]) -> Node | None:
    """Drop `evt.type` tests that always hold for a rule evaluated only on `types` (the
    engine's index already chose them); None means the node is always true."""
    if isinstance(node, Cmp):
        if node.field.name == "evt.type" and node.op in ("=", "in") and types <= set(
                node.values):
            return None
        return node
    if isinstance(node, And):
        items = tuple(x for x in (prune_type_tests(i, types) for i in node.items)
                      if x is not None)
        if not items:
            return None
        return items[0] if len(items) == 1 else And(items)
    if isinstance(node, Or):
        kept = []
        for i in node.items:
            x = prune_type_tests(i, types)
            if x is None:
                return None
            kept.append(x)
        return kept[0] if len(kept) == 1 else Or(tuple(kept))
    return node  # under `not`: keep as written


def specialize(node: Node, etype: str) -> Node | bool:
    """The condition as evaluated on events of type `etype` only: `evt.type` tests become
    constants and are folded away (True: always holds; False: never). A rule written for
    several types (`(evt.type = open and ...) or (evt.type = syscall and ...)`) keeps, per
    type, only the branch that can hold, so its file-only tests can be told apart."""
    if isinstance(node, Cmp):
        if node.field.name != "evt.type":
            return node
        if node.op in ("=", "in"):
            return etype in node.values
        if node.op == "!=":
            return etype != node.values[0]
        return node
    if isinstance(node, Not):
        x = specialize(node.item, etype)
        return (not x) if isinstance(x, bool) else Not(x)
    is_and = isinstance(node, And)
    kept: list[Node] = []
    for it in node.items:
        x = specialize(it, etype)
        if isinstance(x, bool):
            if x is not is_and:   # False in an And, True in an Or: decides the whole node
                return x
            continue
        kept.append(x)
    if not kept:
        return is_and
    if len(kept) == 1:
        return kept[0]
    return And(tuple(kept)) if is_and else Or(tuple(kept))


def conjuncts(node: Node) -> tuple[Node, ...]:
    """The top-level `and` items of a condition (the node itself when it is not an and)."""
    return node.items if isinstance(node, And) else (node,)


def compile_node(node: Node) -> Pred:
    if isinstance(node, And):
        preds = tuple(compile_node(i) for i in node.items)
        if len(preds) == 2:
            a, b = preds
            return lambda c: a(c) and b(c)
        if len(preds) == 3:
            a, b, d = preds
            return lambda c: a(c) and b(c) and d(c)
        return lambda c: all(p(c) for p in preds)
    if isinstance(node, Or):
        preds = tuple(compile_node(i) for i in node.items)
        if len(preds) == 2:
            a, b = preds
            return lambda c: a(c) or b(c)
        return lambda c: any(p(c) for p in preds)
    if isinstance(node, Not):
        p = compile_node(node.item)
        return lambda c: not p(c)
    get = node.field.get
    if node.op == "exists":
        return lambda c: (v := get(c)) is not None and v not in ("", [])
    pred = _value_pred(node.op, node.values, node.field.kind)
    if node.field.kind == BOOL and node.op == "=":
        want = node.values[0] == "true"
        return lambda c: get(c) is want
    if node.field.name == "evt.type":
        # the engine indexes by type: evt.type tests are still exact but cheap
        vals = frozenset(node.values)
        if node.op == "!=":
            v0 = node.values[0]
            return lambda c: c.e["type"] != v0
        return lambda c: c.e["type"] in vals
    if node.field.kind == LIST:
        neg = node.op == "!="
        if neg:
            return lambda c: (v := get(c)) is None or all(pred(x) for x in v)
        return lambda c: (v := get(c)) is not None and any(pred(x) for x in v)
    if node.op == "!=":
        return lambda c: (v := get(c)) is None or pred(v)
    return lambda c: (v := get(c)) is not None and pred(v)
