"""The explanation of an enforcement decision: which policy and rule, what was done.

`explain(event, policies, tiers)` is the `enforcement` object of an enforcement event
(docs/events.md): a pure function of the decision (an EnforceEvent, from the kernel or
from a held exec decided in user space, agent/policy/hold.py), the policies by slot at
the time the record was made (PolicyEngine.policies_at: agent/policy/slots.py, which
survives replacements and agent restarts) and the kernel's enforcement tiers. The
pipeline's format stage (agent/pipeline/format.py) calls it; golden-tested in
tests/unit/policy/test_explain.py.
The kernel decides on slot masks; the rule named here is attributed in user space
(`rule_of`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent
from moray.api.policy.model import (
    CLONE_FLAGS,
    NAMESPACES,
    AgentDown,
    FileRule,
    Policy,
)
from moray.api.policy.syscalls import X86_64

_SYSCALL_NAMES = {v: k for k, v in X86_64.items()}
_KINDS = {abi.EKind.EXEC: "exec", abi.EKind.DRIFT: "drift", abi.EKind.FILE: "file",
          abi.EKind.NET: "network", abi.EKind.SYSCALL: "syscall",
          abi.EKind.LINK: "file-change",
          abi.EKind.NS: "namespaces", abi.EKind.SETID: "setid"}
_ACTIONS = {abi.EAction.BLOCKED: "blocked", abi.EAction.KILLED: "killed",
            abi.EAction.WOULD_BLOCK: "would-block", abi.EAction.HELD: "held",
            abi.EAction.UNCOVERED: "uncovered"}
_VIA: dict[int, str] = {abi.ExecVia.MMAP: "mmap", abi.ExecVia.MPROTECT: "mprotect",
                        abi.ExecVia.SCRIPT: "script"}
_TIER_OF = {abi.EKind.EXEC: "exec", abi.EKind.DRIFT: "exec", abi.EKind.FILE: "file",
            abi.EKind.NET: "network", abi.EKind.SYSCALL: "syscall",
            abi.EKind.LINK: "file-change",
            abi.EKind.NS: "namespaces", abi.EKind.SETID: "setid"}


NameOf = Callable[[tuple[int, int] | None], str | None]


def explain(ev: EnforceEvent, policies: Mapping[int, Policy],
            tiers: Mapping[str, str], name_of: NameOf | None = None) -> dict[str, Any]:
    """The `enforcement` object of an event: what was done, by which policy and rule.
    *name_of* maps the identity of a file the kernel matched by identity to the covered
    path it was found at (agent/policy/identity.py)."""
    covered = name_of(ev.ident) if name_of is not None and ev.ident is not None else None
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
            "rule": rule_of(p, ev, covered) if p else None,
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
    if ev.image is not None:
        out["image"] = {"image": ev.image.image, "digest": ev.image.digest,
                        "verdict": ev.image.verdict, "reasons": list(ev.image.reasons)}
    if ev.kind in (abi.EKind.EXEC, abi.EKind.DRIFT):
        out["binary"] = ev.path
        if ev.path2:
            out["filename"] = ev.path2
        if ev.arg & 0xFF:  # not an exec of the file itself: how its code was reached
            out["via"] = _VIA.get(ev.arg & 0xFF, str(ev.arg & 0xFF))
        if covered is not None and ev.ident is not None and covered != ev.path:
            # denied by identity: the name a deny rule covers (a hard link of it ran)
            out["file"] = {"dev": ev.ident[0], "ino": ev.ident[1], "covered_path": covered}
    elif ev.kind == abi.EKind.FILE:
        out["path"] = ev.path
        out["access"] = {1: "read", 2: "write", 3: "read-write"}.get(ev.arg & 3, "?")
        if ev.ident is not None:  # matched by identity: the covered name of that file
            out["file"] = {"dev": ev.ident[0], "ino": ev.ident[1], "covered_path": covered}
    elif ev.kind == abi.EKind.LINK:
        out["path"] = covered
        out["syscall"] = _SYSCALL_NAMES.get(ev.arg, str(ev.arg)) if ev.arg else None
        out["access"] = "link" if ev.arg in _LINKS else "write"
        if ev.ident is not None:
            out["file"] = {"dev": ev.ident[0], "ino": ev.ident[1], "covered_path": covered}
    elif ev.kind == abi.EKind.NET:
        out["daddr"] = ev.daddr
        out["dport"] = ev.dport
        out["protocol"] = {6: "tcp", 17: "udp"}.get(ev.arg, str(ev.arg))
    elif ev.kind == abi.EKind.SYSCALL:
        out["syscall"] = _SYSCALL_NAMES.get(ev.arg, str(ev.arg))
        out["nr"] = ev.arg
        if ev.ret is not None:  # a mount call, recorded at its exit
            _mount_call(out, ev)
    elif ev.kind in (abi.EKind.NS, abi.EKind.SETID):
        _args(out, ev)
    return out


# --- issue 13: namespace and setid records ---------------------------------------------

def ns_names(flags: int) -> list[str]:
    return [n for n in NAMESPACES if flags & CLONE_FLAGS[n]]


def _args(out: dict[str, Any], ev: EnforceEvent) -> None:
    from moray.agent.policy.inroot import target_of
    from moray.agent.policy.residue import wanted

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
    if ev.kind == abi.EKind.SYSCALL and ev.action == abi.EAction.BLOCKED:
        return "lsm-deny"  # issue 13: lsm/sb_mount, move_mount, sb_umount
    if ev.kind in (abi.EKind.NS, abi.EKind.SETID) and ev.action != abi.EAction.WOULD_BLOCK:
        return "lsm-deny" if ev.action == abi.EAction.BLOCKED else "kill-after"
    key = _TIER_OF.get(abi.EKind(ev.kind)) if ev.kind in _KINDS else None
    return tiers.get(key) if key else None


def _agent_down(ev: EnforceEvent) -> bool:
    return ev.kind in (abi.EKind.EXEC, abi.EKind.DRIFT) and bool(ev.arg & abi.ARG_AGENT_DOWN)


def _note(ev: EnforceEvent) -> str | None:
    if ev.action == abi.EAction.UNCOVERED:
        return ("started while the agent was down: ran without these policies (agentDown: "
                "open) until the agent was back and applied them")
    if _agent_down(ev):
        if ev.action == abi.EAction.HELD:
            return ("the agent was down: first exec in a new cgroup stopped (SIGSTOP) until "
                    "the agent is back to decide it, or agentDownHold passes (then killed)")
        return ("the agent had been down longer than agentDownHold: the first exec in a new "
                "cgroup was refused (agentDown: closed)")
    if ev.action == abi.EAction.HELD:
        return ("first exec in a container not yet classified: stopped (SIGSTOP) before its "
                "first instruction until its policies were applied")
    if ev.action != abi.EAction.KILLED:
        return None
    if ev.image is not None:
        return ("the container's image is blocked by its assurance verdict: its first exec "
                "was held (SIGSTOP) and killed (SIGKILL) before its first instruction")
    if ev.kind == abi.EKind.FILE:
        return ("the open completed; the process was killed (SIGKILL) before it returned to "
                "user space, so nothing was read or written through the descriptor")
    if ev.kind == abi.EKind.SYSCALL and ev.ret is not None and ev.ret < 0:
        return ("the call failed (nothing was changed); the process was killed (SIGKILL) "
                "when it returned")
    if ev.kind == abi.EKind.SYSCALL and ev.ret is not None:
        return ("the call ran; the process was killed (SIGKILL) when it returned; `left` is "
                "what it mounted (found afterwards), `undone` what the agent detached")
    if ev.kind == abi.EKind.SYSCALL:
        return "the syscall ran; the process was killed (SIGKILL) when it returned"
    if ev.kind == abi.EKind.LINK:
        return ("the change was made; the process was killed (SIGKILL) before it returned: "
                "see residue for what it left and what was undone")
    if ev.arg & 0xFF in (abi.ExecVia.MMAP, abi.ExecVia.MPROTECT):
        return ("the mapping was made; the process was killed (SIGKILL) before it returned "
                "to user space, so none of the mapped code ran")
    if ev.arg & 0xFF == abi.ExecVia.SCRIPT:
        return ("the interpreter opened the script; it was killed (SIGKILL) before it "
                "returned to user space, so no line of the script ran")
    if ev.kind == abi.EKind.NS:
        name = _SYSCALL_NAMES.get(ev.arg, "")
        return _NS_NOTES.get(name.removesuffix("3"), _NS_NOTES["unshare"])
    if ev.kind == abi.EKind.SETID:
        return ("the call ran (the bit or capability was set); the process was killed "
                "(SIGKILL) when it returned; `left` is what the agent found afterwards, "
                "`undone` what it changed back")
    return "killed (SIGKILL) before the new image's first instruction"


_LINKS = {X86_64["link"], X86_64["linkat"]}


def rule_of(p: Policy, ev: EnforceEvent, covered: str | None = None) -> str | None:
    """The rule of *p* that matches the event's object (user-space attribution of a
    decision the kernel made on masks). *covered*: the covered path of a file matched by
    identity (the name the task used may be one no rule names)."""
    if ev.action == abi.EAction.UNCOVERED:
        return f"agentDown: {p.agent_down}"
    if _agent_down(ev) and p.agent_down is AgentDown.CLOSED:
        return f"agentDown: closed (agentDownHold: {p.agent_down_hold}s)"
    if ev.image is not None and ev.image.verdict in p.images.block:
        return f"images.block: {ev.image.verdict}"
    if ev.kind == abi.EKind.DRIFT:
        return "exec.drift: block"
    if ev.kind == abi.EKind.EXEC:
        best = None
        for cand in (ev.path, ev.path2, covered):  # covered: denied by another name
            for pat in p.exec.deny:
                if cand and pat.matches(cand) and (best is None or len(pat.path) > len(
                        best.path)):
                    best = pat
        if best is not None:
            return f"exec.deny: {best.text}"
        if p.exec.allow is not None and ev.arg & 0xFF not in (abi.ExecVia.MMAP,
                                                       abi.ExecVia.MPROTECT):
            return "exec.allow: not listed"
        return "exec.drift: block" if p.exec.drift else None
    if ev.kind in (abi.EKind.FILE, abi.EKind.LINK):
        acc = ev.arg & 3 if ev.kind == abi.EKind.FILE else (3 if ev.arg in _LINKS else 2)
        names = [n for n in (ev.path if ev.kind == abi.EKind.FILE else None, covered) if n]
        names += [n.rstrip("/") + "/" for n in names]  # a covered directory itself
        for label, rules in (("files.deny", p.files.deny), ("files.monitor", p.files.monitor)):
            r = FileRule.strongest(rules, names, acc)
            if r is not None:
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


# --- issue 13: mount calls under a syscall rule (agent/policy/mount_residue.py) ---------

def _mount_call(out: dict[str, Any], ev: EnforceEvent) -> None:
    import errno

    from moray.agent.policy.inroot import target_of

    assert ev.ret is not None
    out["result"] = "ok" if ev.ret >= 0 else errno.errorcode.get(-ev.ret, str(ev.ret))
    out["flags"] = f"{ev.value:#x}"
    path = target_of(ev)
    if path:
        out["path"] = path
