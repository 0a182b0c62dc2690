"""User secret rules: a YAML file (``moray-scan --secret-config FILE``) that adds rules and
allow rules and turns built-in ones off, after Trivy's ``trivy-secret.yaml``.

```yaml
rules:                       # added to the built-in rules
  - id: acme-token           # required, unique among all rules
    title: ACME API token    # default: the id
    severity: high           # required: critical, high, medium or low
    regex: '(?P<secret>acme_[a-z0-9]{32})'   # required; Python re, matched on the bytes
    keywords: [acme_]        # strongly recommended: the rule runs only on files holding one
    secret-group: secret     # group holding the value (default: "secret" if the regex
                             # has it, else the whole match)
    path: '\\.env$'           # only files whose path (no leading /) matches
    min-entropy: 3.0         # drop values with less Shannon entropy (bits per character)
    allow-rules: [...]       # like the global ones, for this rule only
allow-rules:                 # added to the built-in allow rules
  - id: fixtures
    description: our test fixtures
    path: '^srv/app/fixtures/'     # files whose path matches are not scanned
    regex: '^dummy-'               # values that match are not reported
enable-builtin-rules: [aws-access-key-id]  # only these built-in rules (default: all)
disable-rules: [twilio-key]                # built-in or own rules turned off
disable-allow-rules: [package-tests]       # built-in allow rules turned off
```

Every mistake (unknown field, bad regex, unknown rule id, a keyword that is not ASCII,
a group the regex lacks) raises ``SecretConfigError`` naming the file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moray.controlplane.scanner.engine.model import Severity
from moray.controlplane.scanner.engine.secrets import (
    ALLOW_RULES,
    RULES,
    AllowRule,
    SecretRule,
    SecretScanner,
    check_keyword,
)
from moray.controlplane.scanner.errors import ScanError

TOP_KEYS = {"rules", "allow-rules", "enable-builtin-rules", "disable-rules",
            "disable-allow-rules"}
# category and secret-group-name are accepted so that Trivy's files load as they are
RULE_KEYS = {"id", "title", "severity", "regex", "keywords", "secret-group", "path",
             "min-entropy", "allow-rules", "category", "secret-group-name"}
ALLOW_KEYS = {"id", "description", "path", "regex"}
SEVERITIES = {"critical", "high", "medium", "low"}


class SecretConfigError(ScanError):
    """A secret rules file is invalid; names the file, the line and the field."""

    def __init__(self, file: str, line: int, field: str, problem: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")

    def __str__(self) -> str:
        return self.message


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line = 0
    key_lines: dict[Any, int]


def _loader() -> type:
    import yaml  # only when a rules file is given: PyYAML costs start-up time

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Map:
        loader.flatten_mapping(node)
        out = _Map()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            out[key] = loader.construct_object(value_node, deep=True)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


class _Reader:
    """Field access with errors that say where: ``rules[2].regex`` at line 14."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, m: _Map | None, field: str, key: str, problem: str) -> SecretConfigError:
        line = 0
        if m is not None:
            line = m.key_lines.get(key, m.line) if key else m.line
        return SecretConfigError(self.file, line, field, problem)

    def mapping(self, value: Any, parent: _Map | None, field: str, key: str,
                allowed: set[str]) -> _Map:
        if not isinstance(value, _Map):
            raise self.fail(parent, field, key, "must be a mapping")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(value, f"{field}.{unknown[0]}", unknown[0],
                            f"unknown field (known: {', '.join(sorted(allowed))})")
        return value

    def text(self, m: _Map, field: str, key: str, *, required: bool = False) -> str | None:
        if key not in m or m[key] is None:
            if required:
                raise self.fail(m, f"{field}.{key}", "", "required field is missing")
            return None
        value = m[key]
        if not isinstance(value, str | int | float) or isinstance(value, bool) or value == "":
            raise self.fail(m, f"{field}.{key}", key, "must be a non-empty string")
        return str(value)

    def strings(self, m: _Map, field: str, key: str) -> list[str]:
        value = m.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(m, f"{field}.{key}", key, "must be a list of strings")
        return value

    def regex(self, m: _Map, field: str, key: str,
              compile_: Callable[[str], re.Pattern[Any]]) -> re.Pattern[Any] | None:
        text = self.text(m, field, key)
        if text is None:
            return None
        try:
            return compile_(text)
        except (re.error, UnicodeEncodeError) as err:
            raise self.fail(m, f"{field}.{key}", key, f"invalid regular expression: {err}") \
                from err


def _allow_rule(r: _Reader, value: Any, parent: _Map, field: str, key: str) -> AllowRule:
    m = r.mapping(value, parent, field, key, ALLOW_KEYS)
    rule_id = r.text(m, field, "id", required=True) or ""
    path = r.regex(m, field, "path", re.compile)
    regex = r.regex(m, field, "regex", re.compile)
    if path is None and regex is None:
        raise r.fail(m, field, "", "an allow rule needs a path or a regex")
    return AllowRule(rule_id, r.text(m, field, "description") or "", path, regex)


def _allow_rules(r: _Reader, m: _Map, field: str) -> list[AllowRule]:
    items = m.get("allow-rules")
    if items is None:
        return []
    if not isinstance(items, list):
        raise r.fail(m, f"{field}allow-rules", "allow-rules", "must be a list")
    return [_allow_rule(r, item, m, f"{field}allow-rules[{i}]", "allow-rules")
            for i, item in enumerate(items)]


def _rule(r: _Reader, value: Any, parent: _Map, field: str) -> SecretRule:
    m = r.mapping(value, parent, field, "rules", RULE_KEYS)
    rule_id = r.text(m, field, "id", required=True) or ""
    severity = (r.text(m, field, "severity", required=True) or "").lower()
    if severity not in SEVERITIES:
        raise r.fail(m, f"{field}.severity", "severity",
                     f"{m['severity']!r} is not one of {', '.join(sorted(SEVERITIES))}")
    pattern = r.regex(m, field, "regex", lambda p: re.compile(p.encode()))
    if pattern is None:
        raise r.fail(m, f"{field}.regex", "", "required field is missing")
    group: int | str = 0
    gkey = "secret-group" if "secret-group" in m else "secret-group-name"
    if gkey in m:
        raw = m[gkey]
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 0 <= raw <= pattern.groups:
                raise r.fail(m, f"{field}.{gkey}", gkey,
                             f"the regex has {pattern.groups} groups, not {raw}")
            group = raw
        elif isinstance(raw, str) and raw in pattern.groupindex:
            group = raw
        else:
            raise r.fail(m, f"{field}.{gkey}", gkey, f"{raw!r} is not a group of the regex")
    elif "secret" in pattern.groupindex:
        group = "secret"
    keywords = []
    for kw in r.strings(m, field, "keywords"):
        try:
            keywords.append(check_keyword(kw))
        except ValueError as err:
            raise r.fail(m, f"{field}.keywords", "keywords", str(err)) from err
    min_entropy = m.get("min-entropy", 0.0)
    if not isinstance(min_entropy, int | float) or isinstance(min_entropy, bool) \
            or not 0 <= min_entropy <= 8:
        raise r.fail(m, f"{field}.min-entropy", "min-entropy", "must be a number from 0 to 8")
    return SecretRule(rule_id, r.text(m, field, "title") or rule_id, Severity(severity),
                      pattern, group, float(min_entropy), tuple(keywords),
                      r.regex(m, field, "path", re.compile),
                      tuple(_allow_rules(r, m, field + ".")))


def load_secret_config(path: Path, max_bytes: int = 2 << 20) -> SecretScanner:
    """A scanner with the built-in rules changed as the file at ``path`` says."""
    import yaml

    file = str(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_loader())  # a SafeLoader subclass
    except OSError as err:
        raise SecretConfigError(file, 0, "", f"cannot read: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SecretConfigError(file, mark.line + 1 if mark else 0, "",
                                f"not valid YAML: {err}") from err
    r = _Reader(file)
    if doc is None:
        doc = _Map()
        doc.key_lines = {}
    top = r.mapping(doc, None, "(top level)", "", TOP_KEYS)

    def id_list(key: str, known: set[str]) -> set[str]:
        ids = r.strings(top, "", key)
        unknown = sorted(set(ids) - known)
        if unknown:
            raise r.fail(top, key, key, f"no rule with id {unknown[0]!r}")
        return set(ids)

    own: list[SecretRule] = []
    items = top.get("rules") or []
    if not isinstance(items, list):
        raise r.fail(top, "rules", "rules", "must be a list")
    seen = {rule.id for rule in RULES}
    for i, item in enumerate(items):
        rule = _rule(r, item, top, f"rules[{i}]")
        if rule.id in seen:
            raise r.fail(item, f"rules[{i}].id", "id", f"duplicate rule id {rule.id!r}")
        seen.add(rule.id)
        own.append(rule)
    own_allow = _allow_rules(r, top, "")
    allow_ids = {a.id for a in ALLOW_RULES}
    for i, a in enumerate(own_allow):
        if a.id in allow_ids:
            raise r.fail(top, f"allow-rules[{i}].id", "allow-rules",
                         f"duplicate allow rule id {a.id!r}")
        allow_ids.add(a.id)
    enabled = id_list("enable-builtin-rules", {rule.id for rule in RULES})
    disabled = id_list("disable-rules", seen)
    disabled_allow = id_list("disable-allow-rules", allow_ids)
    rules = [rule for rule in RULES if not enabled or rule.id in enabled] + own
    return SecretScanner(
        [rule for rule in rules if rule.id not in disabled],
        [a for a in (*ALLOW_RULES, *own_allow) if a.id not in disabled_allow],
        max_bytes,
    )
