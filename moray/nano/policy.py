"""Function policies (``kind: FunctionPolicy``, docs/nano.md) -> validated, then compiled
into the JSON form the enforcer reads inside the function (:mod:`.rules`).

The document is the agent's runtime-policy format (api/policy/, docs/policy.md) where it
fits: the same ``apiVersion``, ``metadata``, ``spec.mode``, the same path syntax
(exact or trailing ``*``), the same ``files.deny`` entries and the same egress entries
(``CIDR``, ``CIDR:PORTS``, ``{cidr, ports, protocol}``), read by the same YAML reader
(``LimitedLoader``: size, depth and alias limits) and helpers, so errors name file, line
and field alike. What differs is what a function needs and a host policy does not have:
no ``scope`` (the policy is the function's), ``exec.allow`` only (a function runs no
program unless listed: there is no host to keep working), ``files.writable`` (writes only
there, default ``/tmp/*``) and egress entries by DNS name (``{host: "*.amazonaws.com",
ports: 443}``): a Lambda's destinations are services behind names whose addresses change.
The kernel-only rule kinds (``syscalls``, ``namespaces``, ``setid``, ``images``,
``agentDown``) have no audit event and are refused here, not silently dropped.

Compiling is pure (text in, dict out); the CLI writes it (``moray nano compile``) or puts
it into the layer (``moray nano layer``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from moray.api.policy.load import (
    _NAME,
    PolicyError,
    _Builder,
    _canonical,
    _Doc,
    compose_all,
    parse_net,
    read_policy_text,
)
from moray.api.policy.model import API_VERSION, Access, Mode, PathPattern
from moray.errors import Problem

from .rules import FORMAT

KIND = "FunctionPolicy"
DEFAULT_WRITABLE = ("/tmp/*",)
_HOST = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                   r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$", re.IGNORECASE)
_KERNEL_ONLY = ("scope", "syscalls", "namespaces", "setid", "images", "agentDown",
                "agentDownHold")


def _ports(text: str | None) -> tuple[list[int] | None, str | None]:
    if text is None or text == "":
        return [0, 65535], None
    lo_s, _, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if hi_s else lo
    except ValueError:
        return None, f"bad port {text!r}"
    if not 0 <= lo <= hi <= 65535:
        return None, f"bad port range {text!r}"
    return [lo, hi], None


def _pattern(p: PathPattern) -> str:
    return p.path if p.exact else p.path + "*"


class _Function:
    """One FunctionPolicy document -> its compiled dict (None after recording errors)."""

    def __init__(self, doc: _Doc) -> None:
        self.d = doc
        self.b = _Builder(doc)

    def compile(self, root: yaml.Node) -> dict[str, Any] | None:
        d = self.d
        before = len(d.problems)
        top = d.mapping(root, "", ("apiVersion", "kind", "metadata", "spec"))
        if top is None:
            return None
        for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
            if key not in top:
                d.err(root, key, "is required")
            elif d.string(top[key][1], key) != want:
                d.err(top[key][1], key, f"must be {want!r}")
        name = ""
        if "metadata" not in top:
            d.err(root, "metadata", "is required")
        else:
            meta = d.mapping(top["metadata"][1], "metadata", ("name", "labels", "description"))
            if meta is not None and "name" not in meta:
                d.err(top["metadata"][1], "metadata.name", "is required")
            elif meta is not None:
                name = d.string(meta["name"][1], "metadata.name") or ""
                if name and not _NAME.match(name):
                    d.err(meta["name"][1], "metadata.name",
                          "lower-case letters, digits, '-' and '.', at most 63")
        if "spec" not in top:
            d.err(root, "spec", "is required")
            return None
        spec = d.mapping(top["spec"][1], "spec", ("mode", "exec", "files", "network", "code",
                                                 *_KERNEL_ONLY))
        if spec is None:
            return None
        for key in _KERNEL_ONLY:
            if key in spec:
                d.err(spec[key][0], f"spec.{key}", "not in a FunctionPolicy: a function's "
                      "Python audit hooks cannot see it (docs/nano.md); use `moray micro` "
                      "for a container image function")
        mode = Mode.ENFORCE
        if "mode" in spec:
            m = d.string(spec["mode"][1], "spec.mode")
            if m not in {x.value for x in Mode}:
                d.err(spec["mode"][1], "spec.mode", "must be enforce or monitor")
            else:
                mode = Mode(m)
        exec_allow = self.exec_allow(spec["exec"][1]) if "exec" in spec else []
        writable, deny = (self.files(spec["files"][1]) if "files" in spec
                          else (list(DEFAULT_WRITABLE), []))
        egress = self.network(spec["network"][1]) if "network" in spec else {
            "allow": None, "hosts": [], "deny": []}
        ctypes, drift = self.code(spec["code"][1]) if "code" in spec else ("allow", "allow")
        if len(d.problems) != before:
            return None
        document = json.dumps(_canonical(root), sort_keys=True, default=str)
        return {"format": FORMAT, "kind": KIND, "name": name, "mode": str(mode),
                "digest": hashlib.sha256(document.encode()).hexdigest(),
                "exec_allow": exec_allow, "writable": writable, "file_deny": deny,
                "egress": egress, "code": {"ctypes": ctypes, "drift": drift}}

    def code(self, node: yaml.Node) -> tuple[str, str]:
        m = self.d.mapping(node, "spec.code", ("ctypes", "drift"))
        out = ["allow", "allow"]
        for i, (key, choices) in enumerate((("ctypes", ("allow", "deny")),
                                            ("drift", ("allow", "block")))):
            if m is None or key not in m:
                continue
            v = self.d.string(m[key][1], f"spec.code.{key}")
            if v not in choices:
                self.d.err(m[key][1], f"spec.code.{key}", f"must be {' or '.join(choices)}")
            else:
                out[i] = v
        return out[0], out[1]

    def exec_allow(self, node: yaml.Node) -> list[str]:
        m = self.d.mapping(node, "spec.exec", ("allow",))
        if m is None or "allow" not in m:
            return []
        return [_pattern(p) for p in self.b.paths(m["allow"][1], "spec.exec.allow")]

    def files(self, node: yaml.Node) -> tuple[list[str], list[dict[str, str]]]:
        m = self.d.mapping(node, "spec.files", ("writable", "deny"))
        if m is None:
            return list(DEFAULT_WRITABLE), []
        writable = ([_pattern(p) for p in self.b.paths(m["writable"][1],
                                                       "spec.files.writable")]
                    if "writable" in m else list(DEFAULT_WRITABLE))
        deny = []
        for r in (self.b.file_list(m["deny"][1], "spec.files.deny") if "deny" in m else ()):
            access = {Access.READ: "read", Access.WRITE: "write"}.get(r.access, "read,write")
            deny.append({"path": _pattern(r.pattern), "access": access})
        return writable, deny

    def network(self, node: yaml.Node) -> dict[str, Any]:
        out: dict[str, Any] = {"allow": None, "hosts": [], "deny": []}
        m = self.d.mapping(node, "spec.network", ("egress",))
        if m is None or "egress" not in m:
            return out
        w = "spec.network.egress"
        e = self.d.mapping(m["egress"][1], w, ("allow", "deny"))
        if e is None:
            return out
        if "deny" in e:
            out["deny"] = [self._net(r) for r in self.b.net_list(e["deny"][1], f"{w}.deny")]
        if "allow" in e:
            out["allow"], out["hosts"] = self.allow(e["allow"][1], f"{w}.allow")
        return out

    @staticmethod
    def _net(r: Any) -> dict[str, Any]:
        return {"text": r.text, "cidr": str(r.network), "ports": [r.port_lo, r.port_hi],
                "protocol": str(r.protocol)}

    def allow(self, node: yaml.Node, where: str) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
        """Egress allow entries: the agent's CIDR forms, or a DNS name
        (``api.example.com``, ``*.example.com``, ``NAME:PORTS``, ``{host, ports}``)."""
        nets: list[dict[str, Any]] = []
        hosts: list[dict[str, Any]] = []
        for i, item in enumerate(self.d.seq(node, where) or []):
            w = f"{where}[{i}]"
            host: str | None = None
            ports: str | None = None
            if isinstance(item, yaml.MappingNode) and any(
                    isinstance(k, yaml.ScalarNode) and k.value == "host"
                    for k, _ in item.value):
                m = self.d.mapping(item, w, ("host", "ports"))
                if m is None:
                    continue
                host = self.d.string(m["host"][1], f"{w}.host")
                if "ports" in m:
                    ports = str(m["ports"][1].value) if isinstance(
                        m["ports"][1], yaml.ScalarNode) else None
                    if ports is None:
                        self.d.err(m["ports"][1], f"{w}.ports", "a port or LO-HI")
                        continue
                if host is None:
                    continue
            elif isinstance(item, yaml.ScalarNode):
                text = self.d.string(item, w)
                if text is None:
                    continue
                rule, err = parse_net(text)
                if rule is not None:
                    nets.append(self._net(rule))
                    continue
                name, sep, port_text = text.rpartition(":")
                host, ports = (name, port_text) if sep and "]" not in text else (text, None)
                if not _HOST.match(host):
                    self.d.err(item, w, f"{text!r}: neither a CIDR ({err}) nor a DNS name")
                    continue
            else:
                for r in self.b.net_list(_seq_of(item), w):
                    nets.append(self._net(r))
                continue
            if not _HOST.match(host):
                self.d.err(item, w, f"{host!r}: not a DNS name (a name, or *.suffix)")
                continue
            rng, err = _ports(ports)
            if rng is None:
                self.d.err(item, w, err or "bad ports")
                continue
            text = host if ports is None else f"{host}:{ports}"
            hosts.append({"text": text, "host": host.rstrip(".").lower(), "ports": rng})
        return nets, hosts


def _seq_of(item: yaml.Node) -> yaml.SequenceNode:
    """One mapping entry as a one-item list, for the agent's ``net_list`` reader."""
    return yaml.SequenceNode("tag:yaml.org,2002:seq", [item], item.start_mark, item.end_mark)


def compile_text(text: str, file: str = "<text>") -> dict[str, Any]:
    """The one FunctionPolicy in ``text``, compiled; PolicyError lists every problem."""
    doc = _Doc(file)
    out: list[dict[str, Any]] = []
    for root in compose_all(text, file):
        if root is not None:
            got = _Function(doc).compile(root)
            if got is not None:
                out.append(got)
    if doc.problems:
        raise PolicyError(doc.problems)
    if len(out) != 1:
        raise PolicyError([Problem(file, 1, "<document>",
                                   f"expected one FunctionPolicy document, found {len(out)}")])
    return out[0]


def compile_file(path: str | Path) -> dict[str, Any]:
    return compile_text(read_policy_text(path), str(Path(path)))


__all__ = ["DEFAULT_WRITABLE", "KIND", "compile_file", "compile_text"]
