"""Pushed policies in moray micro (moray/micro/server.py ``Link``, ``Supervisor.update``):
applied live when the kernel filter is unchanged, refused with "needs restart" when not."""

from __future__ import annotations

from typing import Any

from moray.agent.controlplane import VerifiedPolicy
from moray.api.imageverdicts import VERDICTS_KIND
from moray.micro.server import Link
from moray.micro.supervisor import Supervisor


def pushed(name: str, version: int, spec: dict[str, Any] | None,
           kind: str = "") -> VerifiedPolicy:
    document = {} if spec is None else {
        "apiVersion": "moray/v1", "kind": "RuntimePolicy", "metadata": {"name": name},
        "spec": {"scope": {"host": True}, **spec}}
    return VerifiedPolicy(name=name, tenant="t", version=version, document=document,
                          removed=spec is None, sha256="x", signed=b"", kind=kind)


def start(*specs: tuple[str, dict[str, Any]]) -> tuple[Supervisor, Link]:
    """A supervisor built (not started) from what the initial sync fetched."""
    from moray.micro.server import parse

    held = {name: parse(pushed(name, 1, spec)) for name, spec in specs}
    link = Link((), held, lambda p: None)
    sup = Supervisor(link.policies(), None, node="n")
    link.update = sup.update
    return sup, link


def test_exec_path_change_is_applied_live() -> None:
    sup, link = start(("p", {"exec": {"deny": ["/usr/bin/touch"]}}))
    prog = sup.prog
    assert link(pushed("p", 1, {"exec": {"deny": ["/usr/bin/touch"]}})).ok   # the start's
    result = link(pushed("p", 2, {"exec": {"deny": ["/usr/bin/id"]}, "mode": "monitor"}))
    assert result.ok, result
    assert sup.prog is prog                   # the filter is the installed one
    rules = [str(r) for p in sup.policies for r in p.exec.deny]
    assert len(sup.policies) == 1 and "/usr/bin/id" in rules[0] and not sup.enforcing


def test_a_change_of_the_filter_needs_a_restart_and_changes_nothing() -> None:
    sup, link = start(("p", {"exec": {"deny": ["/usr/bin/touch"]}}))
    before = sup.policies
    for spec in ({"exec": {"deny": ["/usr/bin/touch"]}, "syscalls": {"deny": ["ptrace"]}},
                 {"exec": {"deny": ["/usr/bin/touch"]},
                  "files": {"deny": [{"path": "/etc/shadow", "access": "read"}]}}):
        result = link(pushed("p", 2, spec))
        assert not result.ok and result.error.startswith("needs restart"), result
        assert sup.policies is before
    # a new policy that needs another notified call, and the removal of the only one
    assert not link(pushed("q", 1, {"syscalls": {"deny": ["mount"]}})).ok
    assert not link(pushed("p", 3, None)).ok
    assert sup.policies is before and link.pushed.keys() == {"p"}


def test_a_new_policy_and_a_removal_within_the_filter() -> None:
    sup, link = start(("p", {"exec": {"deny": ["/usr/bin/touch"]}}),
                      ("q", {"exec": {"deny": ["/usr/bin/id"]}}))
    assert link(pushed("r", 1, {"exec": {"deny": ["/usr/bin/env"]}})).ok
    assert link(pushed("q", 2, None)).ok
    assert sorted(p.name for p in sup.policies) == ["p", "r"]


def test_unparsable_and_verdict_list_are_refused() -> None:
    _sup, link = start(("p", {"exec": {"deny": ["/usr/bin/touch"]}}))
    bad = link(pushed("p", 2, {"exec": {"deny": 5}}))
    assert not bad.ok and bad.error
    assert not link(pushed("_image-verdicts", 1, {}, kind=VERDICTS_KIND)).ok
