"""Policy documents as the server sees them: parse YAML or JSON, validate, report errors
with file, line and field, and decide which agents a policy's scope selects.

The schema is the sketch in DESIGN.md §4 (``apiVersion: moray/v1``, ``kind:
RuntimePolicy``). The agent compiles the same document (agent/policy); the server checks
shape and types so a malformed policy is refused at the API and never stored or pushed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

API_VERSION = "moray/v1"
KIND = "RuntimePolicy"
DEFAULT_TENANT = "default"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
_SYSCALL = re.compile(r"^[a-z0-9_]{1,64}$")


class PolicyError(ValueError):
    """A policy document that cannot be stored; names the file, line and field."""

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.file, self.line, self.field, self.message = file, line, field, message

    def as_dict(self) -> dict[str, Any]:
        return {"error": str(self), "file": self.file, "line": self.line,
                "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    name: str
    tenant: str
    document: dict[str, Any]


def _line_index(text: str) -> dict[str, int]:
    """Dotted field path -> 1-based line, from the YAML node tree (JSON is YAML)."""
    index: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                index[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, "")
    return index


class _Checker:
    def __init__(self, file: str, lines: dict[str, int]) -> None:
        self.file, self.lines = file, lines

    def fail(self, field: str, message: str) -> PolicyError:
        line = self.lines.get(field)
        probe = field
        while line is None and probe:
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
            probe = re.sub(r"\[\d+\]$", "", probe) if probe.endswith("]") else probe
            line = self.lines.get(probe)
        return PolicyError(self.file, line, field, message)

    def mapping(self, value: Any, field: str, allowed: set[str] | None = None,
                required: set[str] = frozenset()) -> Mapping[str, Any]:  # type: ignore[assignment]
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be a mapping, not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(field, f"keys must be strings, not {key!r}")
            if allowed is not None and key not in allowed:
                raise self.fail(f"{field}.{key}" if field else key,
                                f"unknown field; expected one of {', '.join(sorted(allowed))}")
        for key in sorted(required):
            if key not in value:
                raise self.fail(field, f"missing required field {key!r}")
        return value

    def string_list(self, value: Any, field: str,
                    check: Callable[[str], str | None] | None = None) -> None:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{field}[{i}]", f"must be a non-empty string, not {item!r}")
            problem = check(item) if check else None
            if problem:
                raise self.fail(f"{field}[{i}]", problem)

    def labels(self, value: Any, field: str) -> None:
        self.mapping(value, field)
        for key, val in value.items():
            if not isinstance(val, str):
                raise self.fail(f"{field}.{key}", f"label values must be strings, not {val!r}")

    def enum(self, value: Any, field: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}, not {value!r}")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number",
            float: "a number", bool: "a boolean", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)


def _abs_path(value: str) -> str | None:
    return None if value.startswith("/") else "must be an absolute path"


def _egress(value: str) -> str | None:
    net, _, port = value.rpartition(":") if value.count(":") == 1 or value.startswith("[") \
        else (value, "", "")
    if not net:
        net, port = value, ""
    try:
        ipaddress.ip_network(net.strip("[]"), strict=False)
    except ValueError:
        return "must be a CIDR or address, optionally with :port"
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return "port must be 1-65535"
    return None


def _syscall(value: str) -> str | None:
    return None if _SYSCALL.match(value) else "must be a syscall name"



def _check_metadata(c: _Checker, meta: Mapping[str, Any]) -> None:
    for key in ("name", "tenant"):
        if key in meta and (not isinstance(meta[key], str) or not _NAME.match(meta[key])):
            raise c.fail(f"metadata.{key}",
                         "must be lower-case letters, digits, '.', '_' or '-' (max 253)")
    if "labels" in meta:
        c.labels(meta["labels"], "metadata.labels")
    if "description" in meta and not isinstance(meta["description"], str):
        raise c.fail("metadata.description", "must be a string")


def _check_scope(c: _Checker, value: Any) -> None:
    scope = c.mapping(value, "spec.scope", {"containers", "hosts"})
    if "containers" in scope:
        cont = c.mapping(scope["containers"], "spec.scope.containers",
                         {"images", "labels", "names"})
        for key in ("images", "names"):
            if key in cont:
                c.string_list(cont[key], f"spec.scope.containers.{key}")
        if "labels" in cont:
            c.labels(cont["labels"], "spec.scope.containers.labels")
    if "hosts" in scope:
        hosts = c.mapping(scope["hosts"], "spec.scope.hosts", {"labels"})
        if "labels" in hosts:
            c.labels(hosts["labels"], "spec.scope.hosts.labels")


def _check_exec(c: _Checker, value: Any) -> None:
    ex = c.mapping(value, "spec.exec", {"deny", "allow", "drift"})
    for key in ("deny", "allow"):
        if key in ex:
            c.string_list(ex[key], f"spec.exec.{key}", _abs_path)
    if "drift" in ex:
        c.enum(ex["drift"], "spec.exec.drift", ("block", "monitor", "off"))


def _check_files(c: _Checker, value: Any) -> None:
    files = c.mapping(value, "spec.files", {"deny", "monitor"})
    for key in ("deny", "monitor"):
        if key not in files:
            continue
        if not isinstance(files[key], list):
            raise c.fail(f"spec.files.{key}", f"must be a list, not {_kind(files[key])}")
        for i, item in enumerate(files[key]):
            field = f"spec.files.{key}[{i}]"
            rule = c.mapping(item, field, {"path", "prefix", "access"})
            if ("path" in rule) == ("prefix" in rule):
                raise c.fail(field, "needs exactly one of 'path' or 'prefix'")
            which = "path" if "path" in rule else "prefix"
            if not isinstance(rule[which], str) or _abs_path(rule[which]):
                raise c.fail(f"{field}.{which}", "must be an absolute path")
            if "access" in rule:
                c.enum(rule["access"], f"{field}.access", ("read", "write", "read-write", "any"))


def _check_network(c: _Checker, value: Any) -> None:
    net = c.mapping(value, "spec.network", {"egress"})
    if "egress" in net:
        egress = c.mapping(net["egress"], "spec.network.egress", {"deny", "allow"})
        for key in ("deny", "allow"):
            if key in egress:
                c.string_list(egress[key], f"spec.network.egress.{key}", _egress)


def _check_syscalls(c: _Checker, value: Any) -> None:
    sys_ = c.mapping(value, "spec.syscalls", {"deny"})
    if "deny" in sys_:
        c.string_list(sys_["deny"], "spec.syscalls.deny", _syscall)


_SECTIONS: dict[str, Callable[[_Checker, Any], None]] = {
    "scope": _check_scope, "exec": _check_exec, "files": _check_files,
    "network": _check_network, "syscalls": _check_syscalls}


def parse_policy(text: str, file: str = "<policy>") -> ParsedPolicy:
    """Parse and validate one policy document; raises PolicyError."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise PolicyError(file, err.lineno, "", f"not valid JSON: {err.msg}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise PolicyError(file, mark.line + 1 if mark else None, "",
                          f"not valid YAML: {getattr(err, 'problem', err)}") from err
    c = _Checker(file, _line_index(text))
    doc = c.mapping(data, "", {"apiVersion", "kind", "metadata", "spec"},
                    {"apiVersion", "kind", "metadata", "spec"})
    if doc["apiVersion"] != API_VERSION:
        raise c.fail("apiVersion", f"must be {API_VERSION!r}, not {doc['apiVersion']!r}")
    if doc["kind"] != KIND:
        raise c.fail("kind", f"must be {KIND!r}, not {doc['kind']!r}")
    meta = c.mapping(doc["metadata"], "metadata", {"name", "tenant", "labels", "description"},
                     {"name"})
    _check_metadata(c, meta)
    spec = c.mapping(doc["spec"], "spec", set(_SECTIONS) | {"mode"})
    if "mode" in spec:
        c.enum(spec["mode"], "spec.mode", ("enforce", "monitor"))
    for key, check in _SECTIONS.items():
        if key in spec:
            check(c, spec[key])
    # Round-trip through JSON: the stored and signed form has JSON types only.
    document = json.loads(json.dumps(doc))
    return ParsedPolicy(name=meta["name"], tenant=meta.get("tenant", DEFAULT_TENANT),
                        document=document)


def selects_host(document: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether the policy applies to an agent with host ``labels``: every label in
    ``spec.scope.hosts.labels`` must be present with the same value. A policy with no host
    selector applies to every agent of its tenant (containers are matched on the agent)."""
    wanted = (document.get("spec", {}).get("scope", {}).get("hosts", {}) or {}).get(
        "labels", {}) or {}
    return all(labels.get(k) == v for k, v in wanted.items())
