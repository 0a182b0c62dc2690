"""Policy documents (YAML or JSON) -> validated :class:`~moray.api.policy.model.Policy`.

YAML is composed into nodes (PyYAML keeps each node's line), so every error names the
file, the line and the field (``web.yaml:12: spec.exec.deny[1]: ...``). All errors of a
document are collected; a document with any error yields no policy, so an invalid document
changes nothing. Unknown fields are errors (a typo must not silently drop a rule).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from moray.api.policy.model import (  # issue 13
    API_VERSION,
    DEFAULT_AGENT_DOWN_HOLD,
    IMAGE_BLOCKS,
    KIND,
    MAX_AGENT_DOWN_HOLD,
    NAMESPACES,
    SETID_KINDS,
    Access,
    AgentDown,
    ContainerSelector,
    ExecRules,
    FileRule,
    FileRules,
    ImageRules,
    Mode,
    NamespaceRules,
    NetRule,
    NetRules,
    PathPattern,
    Policy,
    Protocol,
    Scope,
    SetidRules,
    SyscallRules,
)
from moray.api.policy.syscalls import X86_64
from moray.errors import Problem, ValidationError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
MAX_PATH = 255  # bytes of a path rule (the kernel's LPM key holds 255 + NUL)

# Limits on a policy text, so that no text (a file, an API request, a pushed document) can
# make its reader compose or expand without bound ("billion laughs": nine anchors of nine
# aliases each are 10^9 nodes once expanded). Real policies are a few hundred nodes.
MAX_POLICY_BYTES = 1 << 20   # bytes of one text (a file or one API request's content)
MAX_YAML_DEPTH = 64          # nesting of mappings and lists
MAX_YAML_ALIASES = 256       # uses of anchors (``*name``) in one text
MAX_YAML_NODES = 50_000      # nodes of one text with aliases expanded (~4 s to read at most)


class PolicyValidationError(ValidationError, ValueError):
    """A policy document failed validation; `problems` lists every error found."""


PolicyError = PolicyValidationError  # the name callers used before the shared error root


class YamlLimitError(ValidationError, yaml.YAMLError):
    """A text over one of the limits above, raised while composing; ``problem_mark`` and
    ``field`` say where (``compose_all`` turns it into a PolicyError naming the file)."""

    def __init__(self, mark: Any, field: str, message: str) -> None:
        self.problem_mark, self.field, self.message = mark, field, message
        super().__init__([Problem("<text>", mark.line + 1, field, message)])


class LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with depth, alias and expanded-size limits checked while the
    text is composed, before anything is built from it. Use it for every policy text
    (``yaml.compose_all(text, Loader=LimitedLoader)``); the field path of the node being
    composed (``spec.exec.deny[1]``) names where a limit was hit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []
        self._aliases = 0
        self._nodes = 0
        self._weights: dict[str, int] = {}   # anchor -> nodes under it, expanded

    def _field(self) -> str:
        field = "".join(self._path).lstrip(".") or "<document>"
        return field if len(field) <= 200 else field[:200] + "..."

    def _count(self, nodes: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise YamlLimitError(mark, self._field(),
                                 f"more than {MAX_YAML_NODES} nodes with aliases expanded")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if isinstance(index, int):
            self._path.append(f"[{index}]")
        elif isinstance(index, yaml.ScalarNode):
            self._path.append(f".{index.value}")
        else:
            self._path.append("")
        try:
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise YamlLimitError(event.start_mark, self._field(),
                                         f"more than {MAX_YAML_ALIASES} aliases")
                self._count(self._weights.get(event.anchor or "", 1), event.start_mark)
                return super().compose_node(parent, index)
            if len(self._path) > MAX_YAML_DEPTH:
                raise YamlLimitError(event.start_mark, self._field(),
                                     f"nested deeper than {MAX_YAML_DEPTH} levels")
            before = self._nodes
            self._count(1, event.start_mark)
            node = super().compose_node(parent, index)
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                self._weights[anchor] = self._nodes - before
            return node
        finally:
            self._path.pop()


def compose_all(text: str, file: str) -> list[yaml.Node | None]:
    """The composed documents of a policy text, within the limits above; raises
    PolicyError (file, line, field) for a text over them or not YAML/JSON at all."""
    if len(text) > MAX_POLICY_BYTES or len(text.encode("utf-8", "replace")) > MAX_POLICY_BYTES:
        raise PolicyError([Problem(file, 1, "<document>",
                                   f"larger than {MAX_POLICY_BYTES} bytes")])
    try:
        return list(yaml.compose_all(text, Loader=LimitedLoader))
    except YamlLimitError as err:
        raise PolicyError([Problem(file, err.problem_mark.line + 1, err.field,
                                   err.message)]) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise PolicyError([Problem(file, line, "<document>", f"not YAML/JSON: {err}")]) from err


class _Doc:
    """A composed YAML node tree walked with a field path and error collection."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def err(self, node: yaml.Node | None, where: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Problem(self.file, line, where or "<document>", message))

    # --- typed readers: return None (and record an error) when the node is wrong ----

    def mapping(self, node: yaml.Node, where: str,
                allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, where, "must be a mapping")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.err(k, where, "keys must be strings")
                continue
            sub = f"{where}.{key}" if where else key
            if key not in allowed:
                self.err(k, sub, f"unknown field (expected one of: {', '.join(allowed)})")
                continue
            if key in out:
                self.err(k, sub, "given twice")
                continue
            out[key] = (k, v)
        return out

    def seq(self, node: yaml.Node, where: str) -> list[yaml.Node] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, where, "must be a list")
            return None
        return list(node.value)

    def string(self, node: yaml.Node, where: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":null", ":bool",
                                                                         ":map", ":seq")):
            self.err(node, where, "must be a string")
            return None
        return str(node.value)

    def boolean(self, node: yaml.Node, where: str) -> bool | None:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":bool"):
            return bool(yaml.safe_load(node.value))
        self.err(node, where, "must be true or false")
        return None

    def str_map(self, node: yaml.Node, where: str) -> tuple[tuple[str, str], ...] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, where, "must be a mapping of strings")
            return None
        out = []
        for k, v in node.value:
            key = self.string(k, where)
            val = self.string(v, f"{where}.{key}")
            if key is not None and val is not None:
                out.append((key, val))
        return tuple(sorted(out))

    def str_list(self, node: yaml.Node, where: str) -> tuple[str, ...] | None:
        items = self.seq(node, where)
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            s = self.string(item, f"{where}[{i}]")
            if s is not None:
                out.append(s)
        return tuple(out)


def parse_path(text: str) -> tuple[PathPattern | None, str | None]:
    """`/bin/sh` exact; `/usr/bin/*`, `/usr/bin/**`, `/opt/app*` prefixes. Other wildcards
    cannot be matched in the kernel and are refused."""
    if not text.startswith("/"):
        return None, "must be an absolute path"
    body = text
    exact = True
    if body.endswith("/**"):
        body, exact = body[:-2], False
    elif body.endswith("*"):
        body, exact = body[:-1], False
    if any(c in body for c in "*?["):
        return None, "only a trailing * (prefix) is supported; no other wildcards"
    if "\0" in body:
        return None, "contains NUL"
    if len(body.encode()) > MAX_PATH:
        return None, f"longer than {MAX_PATH} bytes"
    if exact and len(body) > 1 and body.endswith("/"):
        return None, "a directory: write a prefix (dir/*) to cover what is under it"
    never = never_matches(body, exact)
    if never:
        return None, never
    return PathPattern(text, body, exact), None


# Names the kernel never reports: a process's own /proc entry is /proc/<pid>/... in the
# dentry walk, and these fd and stdio names are symbolic links into it.
_SELF_ALIASES = ("/proc/self", "/proc/thread-self", "/dev/fd", "/dev/stdin", "/dev/stdout",
                 "/dev/stderr")


def never_matches(body: str, exact: bool) -> str | None:
    """Why a path rule can never match (None: it can), with the form that would. The
    kernel compares the path it resolved (symbolic links, `.` and `..` followed, one `/`
    between names), so a rule spelled any other way never fires."""
    if body == "/":
        return None
    names = body.split("/")[1:]
    if not exact and names and names[-1] == "":
        names = names[:-1]  # a prefix's trailing slash
    if any(n in ("", ".", "..") for n in names):
        norm = os.path.normpath(body) if body != "/" else "/"
        if not exact:
            norm = norm.rstrip("/") + ("/" if body.endswith("/") else "")
        suggestion = norm if exact else norm + "*"
        return (f"never matches: the kernel sees the resolved path (no '.', '..' or '//'); "
                f"write {suggestion!r}")
    for alias in _SELF_ALIASES:
        if body == alias or body.startswith(alias + "/"):
            if alias.startswith("/proc/"):
                return ("never matches: the kernel sees a process's own entry as "
                        "/proc/<pid>/..., not /proc/self; a rule can name one pid's entry "
                        "or the prefix '/proc/*' (a trailing * is the only wildcard); for "
                        "another process's memory, deny the syscalls (ptrace, "
                        "process_vm_writev)")
            return (f"never matches: {alias} is a link to /proc/self/fd, and the kernel "
                    f"sees the file the descriptor refers to: name that file")
    return None


def parse_net(text: str) -> tuple[NetRule | None, str | None]:
    """`CIDR`, `CIDR:PORT`, `CIDR:LO-HI`; IPv6 in brackets when a port follows
    (`[2001:db8::/32]:443`)."""
    spec, ports = text.strip(), ""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            return None, "unclosed ["
        spec, rest = spec[1:end], spec[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None, "expected :PORT after ]"
            ports = rest[1:]
    elif spec.count(":") == 1:
        spec, ports = spec.split(":")
    try:
        net = ipaddress.ip_network(spec, strict=False)
    except ValueError as err:
        return None, f"not a CIDR: {err}"
    lo, hi = 0, 65535
    if ports:
        lo_s, _, hi_s = ports.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if hi_s else lo
        except ValueError:
            return None, f"bad port {ports!r}"
        if not 0 <= lo <= hi <= 65535:
            return None, f"bad port range {ports!r}"
    return NetRule(text, net, lo, hi), None


class _Builder:
    def __init__(self, doc: _Doc) -> None:
        self.d = doc

    def paths(self, node: yaml.Node, where: str) -> tuple[PathPattern, ...]:
        out = []
        for i, item in enumerate(self.d.seq(node, where) or []):
            s = self.d.string(item, f"{where}[{i}]")
            if s is None:
                continue
            p, err = parse_path(s)
            if err:
                self.d.err(item, f"{where}[{i}]", f"{s!r}: {err}")
            elif p is not None:
                out.append(p)
        return tuple(out)

    def scope(self, node: yaml.Node, where: str) -> Scope:
        m = self.d.mapping(node, where, ("host", "containers"))
        if m is None:
            return Scope()
        host = False
        containers = None
        if "host" in m:
            host = bool(self.d.boolean(m["host"][1], f"{where}.host"))
        if "containers" in m:
            containers = self.selector(m["containers"][1], f"{where}.containers")
        if not host and containers is None:
            self.d.err(node, where, "selects nothing: give host: true and/or containers")
        return Scope(host, containers)

    def selector(self, node: yaml.Node, where: str) -> ContainerSelector:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return ContainerSelector()
        m = self.d.mapping(node, where, ("images", "names", "labels", "namespaces",
                                         "podLabels", "runtimes"))
        if m is None:
            return ContainerSelector()
        d = self.d

        def lst(key: str) -> tuple[str, ...]:
            return (d.str_list(m[key][1], f"{where}.{key}") or ()) if key in m else ()

        def mp(key: str) -> tuple[tuple[str, str], ...]:
            return (d.str_map(m[key][1], f"{where}.{key}") or ()) if key in m else ()

        return ContainerSelector(lst("images"), lst("names"), mp("labels"), lst("namespaces"),
                                 mp("podLabels"), lst("runtimes"))

    def exec_rules(self, node: yaml.Node, where: str) -> ExecRules:
        m = self.d.mapping(node, where, ("deny", "allow", "drift"))
        if m is None:
            return ExecRules()
        deny = self.paths(m["deny"][1], f"{where}.deny") if "deny" in m else ()
        allow = self.paths(m["allow"][1], f"{where}.allow") if "allow" in m else None
        drift = False
        if "drift" in m:
            s = self.d.string(m["drift"][1], f"{where}.drift")
            if s not in (None, "block", "allow"):
                self.d.err(m["drift"][1], f"{where}.drift", "must be block or allow")
            drift = s == "block"
        return ExecRules(deny, allow, drift)

    def file_rules(self, node: yaml.Node, where: str) -> FileRules:
        m = self.d.mapping(node, where, ("deny", "monitor"))
        if m is None:
            return FileRules()
        return FileRules(*(self.file_list(m[k][1], f"{where}.{k}") if k in m else ()
                           for k in ("deny", "monitor")))

    def file_list(self, node: yaml.Node, where: str) -> tuple[FileRule, ...]:
        out = []
        for i, item in enumerate(self.d.seq(node, where) or []):
            w = f"{where}[{i}]"
            if isinstance(item, yaml.ScalarNode):
                s = self.d.string(item, w)
                text, access = s, Access.ANY
            else:
                m = self.d.mapping(item, w, ("path", "prefix", "access"))
                if m is None:
                    continue
                if ("path" in m) == ("prefix" in m):
                    self.d.err(item, w, "give exactly one of path or prefix")
                    continue
                key = "path" if "path" in m else "prefix"
                s = self.d.string(m[key][1], f"{w}.{key}")
                text = s if key == "path" or s is None else s.rstrip("*") + "*"
                access = Access.ANY
                if "access" in m:
                    a = self.d.string(m["access"][1], f"{w}.access")
                    if a not in {x.value for x in Access}:
                        self.d.err(m["access"][1], f"{w}.access", "must be read, write or any")
                        continue
                    access = Access(a)
            if text is None:
                continue
            p, err = parse_path(text)
            if err or p is None:
                self.d.err(item, w, f"{text!r}: {err}")
                continue
            out.append(FileRule(p, access))
        return tuple(out)

    def net_rules(self, node: yaml.Node, where: str) -> NetRules:
        m = self.d.mapping(node, where, ("egress",))
        if m is None or "egress" not in m:
            return NetRules()
        w = f"{where}.egress"
        e = self.d.mapping(m["egress"][1], w, ("deny", "allow"))
        if e is None:
            return NetRules()
        deny = self.net_list(e["deny"][1], f"{w}.deny") if "deny" in e else ()
        allow = self.net_list(e["allow"][1], f"{w}.allow") if "allow" in e else None
        return NetRules(deny, allow)

    def net_list(self, node: yaml.Node, where: str) -> tuple[NetRule, ...]:
        out = []
        for i, item in enumerate(self.d.seq(node, where) or []):
            w = f"{where}[{i}]"
            proto = Protocol.ANY
            if isinstance(item, yaml.MappingNode):
                m = self.d.mapping(item, w, ("cidr", "ports", "protocol"))
                if m is None or "cidr" not in m:
                    if m is not None:
                        self.d.err(item, w, "cidr is required")
                    continue
                cidr = self.d.string(m["cidr"][1], f"{w}.cidr")
                ports = self.d.string(m["ports"][1], f"{w}.ports") if "ports" in m else None
                if "protocol" in m:
                    p = self.d.string(m["protocol"][1], f"{w}.protocol")
                    if p not in {x.value for x in Protocol}:
                        self.d.err(m["protocol"][1], f"{w}.protocol", "must be tcp, udp or any")
                        continue
                    proto = Protocol(p)
                if cidr is None:
                    continue
                text = cidr if ports is None else (
                    f"[{cidr}]:{ports}" if ":" in cidr else f"{cidr}:{ports}")
            else:
                s = self.d.string(item, w)
                if s is None:
                    continue
                text = s
            rule, err = parse_net(text)
            if err or rule is None:
                self.d.err(item, w, f"{text!r}: {err}")
                continue
            out.append(NetRule(text if proto is Protocol.ANY else f"{text} {proto}",
                               rule.network, rule.port_lo, rule.port_hi, proto))
        return tuple(out)

    def syscall_rules(self, node: yaml.Node, where: str) -> SyscallRules:
        m = self.d.mapping(node, where, ("deny",))
        if m is None or "deny" not in m:
            return SyscallRules()
        out = []
        for i, item in enumerate(self.d.seq(m["deny"][1], f"{where}.deny") or []):
            s = self.d.string(item, f"{where}.deny[{i}]")
            if s is None:
                continue
            if s not in X86_64:
                self.d.err(item, f"{where}.deny[{i}]", f"unknown syscall {s!r}")
                continue
            out.append(s)
        return SyscallRules(tuple(sorted(set(out))))


    # --- issue 13 ---
    def name_rules(self, node: yaml.Node, where: str, names: tuple[str, ...]) -> tuple[str, ...]:
        """`{deny: [name, ...]}` over *names*, or `all`."""
        m = self.d.mapping(node, where, ("deny",))
        if m is None or "deny" not in m:
            return ()
        out: set[str] = set()
        for i, item in enumerate(self.d.seq(m["deny"][1], f"{where}.deny") or []):
            s = self.d.string(item, f"{where}.deny[{i}]")
            if s is None:
                continue
            if s == "all":
                out.update(names)
            elif s in names:
                out.add(s)
            else:
                self.d.err(item, f"{where}.deny[{i}]",
                           f"{s!r}: expected one of: {', '.join(names)}, all")
        return tuple(n for n in names if n in out)


    def image_rules(self, node: yaml.Node, where: str) -> ImageRules:
        """`{block: [non-compliant, unregistered], policies: [name, ...]}`."""
        m = self.d.mapping(node, where, ("block", "policies"))
        if m is None:
            return ImageRules()
        block: set[str] = set()
        if "block" not in m:
            self.d.err(node, f"{where}.block", "is required (non-compliant, unregistered)")
        else:
            for i, item in enumerate(self.d.seq(m["block"][1], f"{where}.block") or []):
                s = self.d.string(item, f"{where}.block[{i}]")
                if s is None:
                    continue
                if s not in IMAGE_BLOCKS:
                    self.d.err(item, f"{where}.block[{i}]",
                               f"{s!r}: expected one of: {', '.join(IMAGE_BLOCKS)}")
                block.add(s)
        policies: list[str] = []
        if "policies" in m:
            for i, item in enumerate(self.d.seq(m["policies"][1], f"{where}.policies") or []):
                s = self.d.string(item, f"{where}.policies[{i}]")
                if s is not None and s not in policies:
                    policies.append(s)
        return ImageRules(tuple(b for b in IMAGE_BLOCKS if b in block), tuple(policies))


def _canonical(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _policy(doc: _Doc, root: yaml.Node) -> Policy | None:
    top = doc.mapping(root, "", ("apiVersion", "kind", "metadata", "spec"))
    if top is None:
        return None
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if key not in top:
            doc.err(root, key, "is required")
        elif doc.string(top[key][1], key) != want:
            doc.err(top[key][1], key, f"must be {want!r}")
    name, tenant = "", "default"
    if "metadata" not in top:
        doc.err(root, "metadata", "is required")
    else:
        meta = doc.mapping(top["metadata"][1], "metadata", ("name", "tenant", "labels",
                                                            "description"))
        if meta is not None:
            if "name" not in meta:
                doc.err(top["metadata"][1], "metadata.name", "is required")
            else:
                name = doc.string(meta["name"][1], "metadata.name") or ""
                if name and not _NAME.match(name):
                    doc.err(meta["name"][1], "metadata.name",
                            "lower-case letters, digits, '-' and '.', at most 63")
            if "tenant" in meta:
                tenant = doc.string(meta["tenant"][1], "metadata.tenant") or "default"
    if "spec" not in top:
        doc.err(root, "spec", "is required")
        return None
    spec = doc.mapping(top["spec"][1], "spec", ("scope", "mode", "exec", "files", "network",
                                               "syscalls", "agentDown", "agentDownHold",
                                               "namespaces", "setid", "images"))
    if spec is None:
        return None
    b = _Builder(doc)
    mode = Mode.ENFORCE
    if "mode" in spec:
        m = doc.string(spec["mode"][1], "spec.mode")
        if m not in {x.value for x in Mode}:
            doc.err(spec["mode"][1], "spec.mode", "must be enforce or monitor")
        else:
            mode = Mode(m)
    if "scope" not in spec:
        doc.err(top["spec"][1], "spec.scope", "is required")
        scope = Scope()
    else:
        scope = b.scope(spec["scope"][1], "spec.scope")
    ex = b.exec_rules(spec["exec"][1], "spec.exec") if "exec" in spec else ExecRules()
    fi = b.file_rules(spec["files"][1], "spec.files") if "files" in spec else FileRules()
    ne = b.net_rules(spec["network"][1], "spec.network") if "network" in spec else NetRules()
    sy = (b.syscall_rules(spec["syscalls"][1], "spec.syscalls") if "syscalls" in spec
          else SyscallRules())
    ns = NamespaceRules(b.name_rules(spec["namespaces"][1], "spec.namespaces", NAMESPACES)
                        if "namespaces" in spec else ())
    si = SetidRules(b.name_rules(spec["setid"][1], "spec.setid", SETID_KINDS)
                    if "setid" in spec else ())
    im = _images(doc, b, spec, scope)
    if not (ex.used or fi.used or ne.used or sy.used or ns.used or si.used or im.used) \
            and not doc.problems:
        doc.err(top["spec"][1], "spec", "has no rules (exec, files, network, syscalls, "
                                        "namespaces, setid or images)")
    down, hold = _agent_down(doc, spec)
    document = json.dumps(_canonical(root), sort_keys=True, default=str)
    digest = hashlib.sha256(document.encode()).hexdigest()
    return Policy(name, tenant, mode, scope, ex, fi, ne, sy, doc.file, digest, document,
                  down, hold, namespaces=ns, setid=si, images=im)


def _images(doc: _Doc, b: _Builder, spec: dict[str, tuple[yaml.Node, yaml.Node]],
            scope: Scope) -> ImageRules:
    """spec.images (issue 16): only for policies that scope containers."""
    if "images" not in spec:
        return ImageRules()
    im = b.image_rules(spec["images"][1], "spec.images")
    if im.used and scope.containers is None and not doc.problems:
        doc.err(spec["images"][1], "spec.images",
                "applies to containers: the policy needs spec.scope.containers")
    return im


_DURATION = re.compile(r"^(\d+)(s|m)?$")


def _agent_down(doc: _Doc, spec: dict[str, tuple[yaml.Node, yaml.Node]]
                ) -> tuple[AgentDown, int]:
    """spec.agentDown (open | closed) and spec.agentDownHold (seconds: 30, "30s", "2m";
    only with closed)."""
    down = AgentDown.OPEN
    if "agentDown" in spec:
        v = doc.string(spec["agentDown"][1], "spec.agentDown")
        if v not in {x.value for x in AgentDown}:
            doc.err(spec["agentDown"][1], "spec.agentDown", "must be open or closed")
        else:
            down = AgentDown(v)
    hold = DEFAULT_AGENT_DOWN_HOLD
    if "agentDownHold" in spec:
        node = spec["agentDownHold"][1]
        m = _DURATION.match(str(node.value)) if isinstance(node, yaml.ScalarNode) else None
        if m is None:
            doc.err(node, "spec.agentDownHold", "seconds, e.g. 30, 30s or 2m")
        else:
            hold = int(m.group(1)) * (60 if m.group(2) == "m" else 1)
            if hold > MAX_AGENT_DOWN_HOLD:
                doc.err(node, "spec.agentDownHold", f"at most {MAX_AGENT_DOWN_HOLD}s")
            elif down is not AgentDown.CLOSED:
                doc.err(node, "spec.agentDownHold", "only with agentDown: closed")
    return down, hold


def load_text(text: str, file: str = "<text>") -> list[Policy]:
    """Every policy document in *text*; raises PolicyError listing every problem."""
    doc = _Doc(file)
    out: list[Policy] = []
    for root in compose_all(text, file):
        if root is None:
            continue
        before = len(doc.problems)
        p = _policy(doc, root)
        if p is not None and len(doc.problems) == before:
            out.append(p)
    if doc.problems:
        raise PolicyError(doc.problems)
    if not out:
        raise PolicyError([Problem(file, 1, "<document>", "no policy document")])
    names = [p.name for p in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PolicyError([Problem(file, 1, "metadata.name", f"{n!r} defined twice")
                           for n in sorted(dup)])
    return out


def read_policy_text(path: str | os.PathLike[str]) -> str:
    """A policy file's text, or ``PolicyError`` naming the file (too large, unreadable,
    not UTF-8)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_POLICY_BYTES:
            raise PolicyError([Problem(str(p), 1, "<file>",
                                       f"larger than {MAX_POLICY_BYTES} bytes")])
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError([Problem(str(p), 0, "<file>", f"cannot read: {err}")]) from err


def load_file(path: str | os.PathLike[str]) -> list[Policy]:
    return load_text(read_policy_text(path), str(Path(path)))


def policy_files(directory: str | os.PathLike[str]) -> Iterator[Path]:
    d = Path(directory)
    if not d.is_dir():
        return
    for p in sorted(d.iterdir()):
        if p.suffix in (".yaml", ".yml", ".json") and p.is_file() and not p.name.startswith("."):
            yield p


def load_dir(directory: str | os.PathLike[str]) -> tuple[list[Policy], list[PolicyError]]:
    """Valid policies of every file in *directory*, and the errors of the invalid files
    (which contribute nothing). A name defined in two files: the first file wins."""
    policies: list[Policy] = []
    errors: list[PolicyError] = []
    seen: dict[str, str] = {}
    for path in policy_files(directory):
        try:
            found = load_file(path)
        except PolicyError as err:
            errors.append(err)
            continue
        for pol in found:
            if pol.name in seen:
                errors.append(PolicyError([Problem(str(path), 1, "metadata.name",
                                                   f"{pol.name!r} already defined in "
                                                   f"{seen[pol.name]}")]))
                continue
            seen[pol.name] = str(path)
            policies.append(pol)
    return policies, errors
