"""Policy documents as the server sees them.

The rules are validated by the agent's own loader (``moray.api.policy.load``, docs/policy.md),
so the server accepts exactly what agents can enforce and reports errors the same way:
file, line, field. The control plane adds one field the agent does not know:

    spec:
      scope:
        agents: {labels: {zone: a}}   # which agents receive this policy (host labels)
        host: true                    # ...the agent's own scope: host processes
        containers: {...}             #    and/or containers on those hosts

``spec.scope.agents`` stays in the stored document (history, rollback) and is removed
from the document agents receive (``agent_document``). A policy without it goes to every
agent of its tenant (``metadata.tenant``, default ``default``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from moray.api.policy.load import (
    MAX_POLICY_BYTES,
    LimitedLoader,
    PolicyValidationError,
    load_text,
)
from moray.api.tenants import DEFAULT_TENANT, TenantNameError, check_tenant
from moray.errors import ControlPlaneError

SELECTOR = "spec.scope.agents"


class PolicyDocError(ControlPlaneError, ValueError):
    """A policy text that cannot be stored; names the file, line and field of the first
    problem and lists all of them in ``problems``."""

    def __init__(self, file: str, line: int | None, field: str, message: str,
                 problems: list[dict[str, Any]] | None = None) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.file, self.line, self.field, self.message = file, line, field, message
        self.problems = problems or [{"file": file, "line": line, "field": field,
                                      "message": message}]

    def as_dict(self) -> dict[str, Any]:
        return {"error": str(self), "file": self.file, "line": self.line,
                "field": self.field, "message": self.message, "problems": self.problems}


PolicyError = PolicyDocError  # the name callers used before the shared error root


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    name: str
    tenant: str
    document: dict[str, Any]


def agent_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document as agents receive it: without the control plane's agent selector."""
    out = copy.deepcopy(dict(document))
    scope = out.get("spec", {}).get("scope")
    if isinstance(scope, dict):
        scope.pop("agents", None)
    return out


def selects_host(document: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether an agent with host ``labels`` receives the policy: it has every label in
    ``spec.scope.agents.labels`` with the same value (no selector: every agent)."""
    scope = document.get("spec", {}).get("scope", {}) or {}
    wanted = (scope.get("agents") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _selector_problems(root: yaml.Node, file: str) -> list[dict[str, Any]]:
    """Check ``spec.scope.agents`` in one composed document."""
    def child(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            return None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
        return None

    spec = child(root, "spec")
    scope = child(spec[1], "scope") if spec else None
    agents = child(scope[1], "agents") if scope else None
    if agents is None:
        return []
    problems = []

    def bad(node: yaml.Node, field: str, message: str) -> None:
        problems.append({"file": file, "line": node.start_mark.line + 1, "field": field,
                         "message": message})

    node = agents[1]
    if not isinstance(node, yaml.MappingNode):
        bad(node, SELECTOR, "must be a mapping")
        return problems
    for k, v in node.value:
        if k.value != "labels":
            bad(k, f"{SELECTOR}.{k.value}", "unknown field (expected one of: labels)")
        elif not isinstance(v, yaml.MappingNode):
            bad(v, f"{SELECTOR}.labels", "must be a mapping of strings")
        else:
            for lk, lv in v.value:
                if not (isinstance(lv, yaml.ScalarNode) and lv.tag.endswith(":str")):
                    bad(lv, f"{SELECTOR}.labels.{lk.value}", "must be a string")
    return problems


def _line_of(roots: list[yaml.Node], index: int, key: str) -> int | None:
    """1-based line of ``metadata.<key>`` in the index-th document, if it can be found."""
    if index >= len(roots) or not isinstance(roots[index], yaml.MappingNode):
        return None
    for k, v in roots[index].value:
        if k.value == "metadata" and isinstance(v, yaml.MappingNode):
            for k2, v2 in v.value:
                if k2.value == key:
                    return int(v2.start_mark.line) + 1
    return int(roots[index].start_mark.line) + 1


def parse_policies(text: str, file: str = "<policy>") -> list[ParsedPolicy]:
    """Every policy document in ``text`` (``---`` separates several); raises PolicyDocError
    naming file, line and field, and then nothing of the text may be stored."""
    problems: list[dict[str, Any]] = []
    try:
        load_text(text, file)
    except PolicyValidationError as err:
        problems += [{"file": p.file, "line": p.line, "field": p.field, "message": p.message}
                     for p in err.problems if not p.field.startswith(SELECTOR)]
    try:
        if len(text) > MAX_POLICY_BYTES:
            raise yaml.YAMLError("over the size limit")
        roots = [r for r in yaml.compose_all(text, Loader=LimitedLoader) if r is not None]
        documents = [d for d in yaml.load_all(text, Loader=LimitedLoader) if d is not None]
    except yaml.YAMLError:
        roots, documents = [], []      # the loader has reported it (not YAML, over a limit)
    for root in roots:
        problems += _selector_problems(root, file)
    if problems:
        problems.sort(key=lambda p: (p["line"] or 0))
        first = problems[0]
        raise PolicyDocError(first["file"], first["line"], first["field"], first["message"],
                          problems)
    out: list[ParsedPolicy] = []
    for doc in documents:
        wire = json.dumps(doc, default=str)
        if len(wire) > MAX_POLICY_BYTES:     # what agents load must be within their limit
            raise PolicyDocError(file, 1, "<document>",
                                 f"larger than {MAX_POLICY_BYTES} bytes as JSON")
        document = json.loads(wire)   # JSON types only
        meta = document["metadata"]
        tenant = meta.get("tenant") or DEFAULT_TENANT
        try:
            check_tenant(tenant)
        except TenantNameError as err:
            raise PolicyDocError(file, _line_of(roots, len(out), "tenant"),
                                 "metadata.tenant", str(err)) from err
        out.append(ParsedPolicy(name=meta["name"], tenant=tenant, document=document))
    return out


def parse_policy(text: str, file: str = "<policy>") -> ParsedPolicy:
    """The one policy document in ``text``."""
    policies = parse_policies(text, file)
    if len(policies) != 1:
        raise PolicyDocError(file, 1, "<document>",
                          f"expected one policy document, found {len(policies)}")
    return policies[0]
