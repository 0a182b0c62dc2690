"""The explanation of an enforcement decision: which policy and rule, what was done.

`explain(event, policies, tiers)` is the `enforcement` object of an enforcement event
(docs/events.md): a pure function of the decision (an EnforceEvent, from the kernel or
from a held exec decided in user space, agent/policy/hold.py), the policies by slot at
the time (PolicyEngine.by_slot, which keeps a replaced slot's policy so late events
still name it) and the kernel's enforcement tiers. The pipeline's format stage
(agent/pipeline/format.py) calls it; golden-tested in tests/unit/policy/test_explain.py.
The kernel decides on slot masks; the rule named here is attributed in user space
(`rule_of`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent
from moray.api.policy.model import CLONE_FLAGS, NAMESPACES, Access, Policy
from moray.api.policy.syscalls import X86_64

_SYSCALL_NAMES = {v: k for k, v in X86_64.items()}
_KINDS = {abi.EKind.EXEC: "exec", abi.EKind.DRIFT: "drift", abi.EKind.FILE: "file",
          abi.EKind.NET: "network", abi.EKind.SYSCALL: "syscall",
          abi.EKind.NS: "namespaces", abi.EKind.SETID: "setid"}
_ACTIONS = {abi.EAction.BLOCKED: "blocked", abi.EAction.KILLED: "killed",
            abi.EAction.WOULD_BLOCK: "would-block", abi.EAction.HELD: "held"}
_TIER_OF = {abi.EKind.EXEC: "exec", abi.EKind.DRIFT: "exec", abi.EKind.FILE: "file",
            abi.EKind.NET: "network", abi.EKind.SYSCALL: "syscall",
            abi.EKind.NS: "namespaces", abi.EKind.SETID: "setid"}


def explain(ev: EnforceEvent, policies: Mapping[int, Policy],
            tiers: Mapping[str, str]) -> dict[str, Any]:
    """The `enforcement` object of an event: what was done, by which policy and rule."""
    kind = _KINDS.get(abi.EKind(ev.kind), str(ev.kind)) if ev.kind in _KINDS else str(
        ev.kind)
    action = _ACTIONS.get(abi.EAction(ev.action), str(ev.action)) if ev.action in \
        _ACTIONS else str(ev.action)
    matched = []
    for s in range(abi.POL_MAX):
        if not (ev.policies >> s) & 1:
            continue
        p = policies.get(s)
        matched.append({
            "name": p.name if p else f"slot-{s}",
            "mode": str(p.mode) if p else None,
            "enforced": bool((ev.enforced >> s) & 1),
            "rule": rule_of(p, ev) if p else None,
        })
    first = next((m for m in matched if m["enforced"]), matched[0] if matched else None)
    out: dict[str, Any] = {
        "action": action, "kind": kind,
        "tier": _tier(ev, tiers),
        "policy": first["name"] if first else None,
        "rule": first["rule"] if first else None,
        "policies": matched,
    }
    note = _note(ev)
    if note:
        out["note"] = note
    if ev.kind in (abi.EKind.EXEC, abi.EKind.DRIFT):
        out["binary"] = ev.path
        if ev.path2:
            out["filename"] = ev.path2
    elif ev.kind == abi.EKind.FILE:
        out["path"] = ev.path
        out["access"] = {1: "read", 2: "write", 3: "read-write"}.get(ev.arg & 3, "?")
    elif ev.kind == abi.EKind.NET:
        out["daddr"] = ev.daddr
        out["dport"] = ev.dport
        out["protocol"] = {6: "tcp", 17: "udp"}.get(ev.arg, str(ev.arg))
    elif ev.kind == abi.EKind.SYSCALL:
        out["syscall"] = _SYSCALL_NAMES.get(ev.arg, str(ev.arg))
        out["nr"] = ev.arg
    elif ev.kind in (abi.EKind.NS, abi.EKind.SETID):
        _args(out, ev)
    return out


# --- issue 13: namespace and setid records ---------------------------------------------

def ns_names(flags: int) -> list[str]:
    return [n for n in NAMESPACES if flags & CLONE_FLAGS[n]]


def _args(out: dict[str, Any], ev: EnforceEvent) -> None:
    from moray.agent.policy.residue import target_of, wanted

    out["syscall"] = _SYSCALL_NAMES.get(ev.arg, str(ev.arg))
    out["nr"] = ev.arg
    if ev.kind == abi.EKind.NS:
        out["namespaces"] = ns_names(ev.value)
        out["flags"] = f"{ev.value:#x}"
    else:
        out["setid"] = wanted(ev)
        out["path"] = target_of(ev)
        if ev.value:
            out["mode"] = f"{ev.value & 0o7777:04o}"


_NS_NOTES = {
    "clone": ("the process was killed (SIGKILL) before the fork completed: the kernel "
              "aborts a fork whose caller has a fatal signal pending, so no child and no "
              "namespace was created"),
    "unshare": ("unshare ran; the process was killed (SIGKILL) when it returned: its new "
                "namespaces were held by it alone and were freed with it (unless another "
                "process had opened /proc/<pid>/ns/ meanwhile)"),
    "setns": ("setns ran; the process was killed (SIGKILL) when it returned: it had "
              "joined the namespace, nothing new was created"),
}


def _tier(ev: EnforceEvent, tiers: Mapping[str, str]) -> str | None:
    if ev.kind in (abi.EKind.NS, abi.EKind.SETID) and ev.action != abi.EAction.WOULD_BLOCK:
        return "lsm-deny" if ev.action == abi.EAction.BLOCKED else "kill-after"
    key = _TIER_OF.get(abi.EKind(ev.kind)) if ev.kind in _KINDS else None
    return tiers.get(key) if key else None


def _note(ev: EnforceEvent) -> str | None:
    if ev.action == abi.EAction.HELD:
        return ("first exec in a container not yet classified: stopped (SIGSTOP) before its "
                "first instruction until its policies were applied")
    if ev.action != abi.EAction.KILLED:
        return None
    if ev.kind == abi.EKind.FILE:
        return ("the open completed; the process was killed (SIGKILL) before it returned to "
                "user space, so nothing was read or written through the descriptor")
    if ev.kind == abi.EKind.SYSCALL:
        return "the syscall ran; the process was killed (SIGKILL) when it returned"
    if ev.kind == abi.EKind.NS:
        name = _SYSCALL_NAMES.get(ev.arg, "")
        return _NS_NOTES.get(name.removesuffix("3"), _NS_NOTES["unshare"])
    if ev.kind == abi.EKind.SETID:
        return ("the call ran (the bit or capability was set); the process was killed "
                "(SIGKILL) when it returned; `left` is what the agent found afterwards, "
                "`undone` what it changed back")
    return "killed (SIGKILL) before the new image's first instruction"


def rule_of(p: Policy, ev: EnforceEvent) -> str | None:
    """The rule of *p* that matches the event's object (user-space attribution of a
    decision the kernel made on masks)."""
    if ev.kind == abi.EKind.DRIFT:
        return "exec.drift: block"
    if ev.kind == abi.EKind.EXEC:
        best = None
        for cand in (ev.path, ev.path2):
            for pat in p.exec.deny:
                if cand and pat.matches(cand) and (best is None or len(pat.path) > len(
                        best.path)):
                    best = pat
        if best is not None:
            return f"exec.deny: {best.text}"
        if p.exec.allow is not None:
            return "exec.allow: not listed"
        return "exec.drift: block" if p.exec.drift else None
    if ev.kind == abi.EKind.FILE:
        acc = ev.arg & 3
        for label, rules in (("files.deny", p.files.deny), ("files.monitor", p.files.monitor)):
            hits = [r for r in rules if r.pattern.matches(ev.path) and (
                r.access is Access.ANY or (r.access is Access.READ and acc & 1)
                or (r.access is Access.WRITE and acc & 2))]
            if hits:
                r = max(hits, key=lambda x: len(x.pattern.path))
                return f"{label}: {r.pattern.text} ({r.access})"
        return None
    if ev.kind == abi.EKind.NET:
        try:
            addr = ipaddress.ip_address(ev.daddr or "")
        except ValueError:
            return None
        for nr in p.network.deny:
            if nr.matches(addr, ev.dport, ev.arg):
                return f"network.egress.deny: {nr.text}"
        if p.network.allow is not None:
            return "network.egress.allow: not listed"
        return None
    if ev.kind == abi.EKind.SYSCALL:
        name = _SYSCALL_NAMES.get(ev.arg)
        return f"syscalls.deny: {name}" if name in p.syscalls.deny else None
    if ev.kind == abi.EKind.NS:
        hit = [n for n in ns_names(ev.value) if n in p.namespaces.deny]
        return f"namespaces.deny: {', '.join(hit)}" if hit else None
    if ev.kind == abi.EKind.SETID:
        from moray.agent.policy.residue import wanted

        hit = [k for k in wanted(ev) if k in p.setid.deny]
        return f"setid.deny: {', '.join(hit)}" if hit else None
    return None
