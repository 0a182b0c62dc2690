"""Rule files (YAML) -> a validated, compiled :class:`~moray.agent.detect.plan.RuleSet`:
the YAML side (items, keys, file:line of every node); compile.py does the rest.

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from moray.agent.detect.compile import compile_rules
from moray.agent.detect.fields import FIELDS
from moray.agent.detect.model import RawRule, RawRuleset, RuleError
from moray.agent.detect.plan import RuleSet
from moray.errors import Problem

DEFAULT_RULES = Path(__file__).with_name("ruleset") / "default.yaml"
LIST_KEYS = ("list", "items", "append")
MACRO_KEYS = ("macro", "condition", "append")
RULE_KEYS = ("rule", "desc", "condition", "output", "priority", "tags", "mitre", "exceptions",
             "throttle", "response", "watch", "enabled", "append")


class _Loader:
    """Reads rule files, in order, into one RawRuleset (self.raw)."""

    def __init__(self) -> None:
        self.raw = RawRuleset()

    def err(self, file: str, node: yaml.Node | None, where: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.raw.problems.append(Problem(file, line, where, msg))

    def load_text(self, text: str, file: str) -> None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            self.raw.problems.append(Problem(file, mark.line + 1 if mark else 0, "<document>",
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
                self.raw.problems.append(Problem(file, 0, f"{where}.{key}", "missing"))
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
                    self.raw.problems.append(Problem(file, line, f"{where}.items", "missing"))
                return
            if m.get("append", (None, False))[1] is True:
                if name not in self.raw.lists:
                    self.raw.problems.append(Problem(file, line, f"{where}.append",
                                                     f"no earlier list {name!r} to append to"))
                    return
                self.raw.lists[name] = self.raw.lists[name] + items
            else:
                self.raw.lists[name] = items
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
                if name not in self.raw.macros:
                    self.raw.problems.append(Problem(file, line, f"{where}.append",
                                                     f"no earlier macro {name!r} to append to"))
                    return
                self.raw.macros[name] = f"({self.raw.macros[name]}) or ({cond})"
            else:
                self.raw.macros[name] = cond
            self.raw.macro_src[name] = (file, m["condition"][0].start_mark.line + 1)
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
            base = self.raw.rules.get(name)
            if base is None:
                self.raw.problems.append(Problem(file, line, f"{where}.append",
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
            self.raw.problems.append(Problem(file, line, f"{where}.condition", "missing"))
            return
        self.raw.rules[name] = RawRule(name, file, line, where, vals, lines, excs)


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
            ld.raw.problems.append(Problem(str(p), 0, "<file>", f"cannot read: {err.strerror}"))
            continue
        ld.load_text(text, str(p))
    if ld.raw.problems:
        raise RuleError(ld.raw.problems)
    return compile_rules(ld.raw, homes if homes is not None else host_homes())


def load_texts(texts: Sequence[tuple[str, str]], homes: Iterable[str] = ("/root",)) -> RuleSet:
    """(file name, YAML text) pairs -> RuleSet: for tests and tools."""
    ld = _Loader()
    for name, text in texts:
        ld.load_text(text, name)
    if ld.raw.problems:
        raise RuleError(ld.raw.problems)
    return compile_rules(ld.raw, homes)
