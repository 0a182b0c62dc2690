"""spec.agentDown / agentDownHold (issue 13, must-have 10): validation, the kernel
configuration they compile to, the guard's rule, and how events explain them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moray.agent.bpf import abi
from moray.agent.events.types import Decision, EnforceEvent, Proc
from moray.agent.policy.apply import dec_conf, enc_conf
from moray.agent.policy.compile import compile_policies
from moray.agent.policy.explain import explain
from moray.agent.policy.guard import OPEN_AFTER_NS, journal_path, verdict
from moray.agent.policy.hold import Holds
from moray.api.policy.load import PolicyError, load_text
from moray.api.policy.model import AgentDown

BASE = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: %s}
spec:
  scope: {containers: {}}
  exec: {deny: [/bin/nc]}
"""
S = 1_000_000_000


def pol(name: str, extra: str = "") -> str:
    return BASE % name + extra


def test_default_is_open_and_closed_takes_a_bounded_hold() -> None:
    (p,) = load_text(pol("a"))
    assert (p.agent_down, p.agent_down_hold) == (AgentDown.OPEN, 30)
    (p,) = load_text(pol("b", "  agentDown: closed\n"))
    assert (p.agent_down, p.agent_down_hold) == (AgentDown.CLOSED, 30)
    for text, secs in (("45", 45), ("45s", 45), ("2m", 120), ("0", 0)):
        (p,) = load_text(pol("c", f"  agentDown: closed\n  agentDownHold: {text}\n"))
        assert p.agent_down_hold == secs


@pytest.mark.parametrize(("extra", "where"), [
    ("  agentDown: shut\n", "7: spec.agentDown"),
    ("  agentDownHold: 10\n", "7: spec.agentDownHold"),        # open: nothing to hold
    ("  agentDown: closed\n  agentDownHold: 1h\n", "8: spec.agentDownHold"),
    ("  agentDown: closed\n  agentDownHold: 3601\n", "8: spec.agentDownHold"),
])
def test_bad_agent_down_names_the_field(extra: str, where: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_text(pol("d", extra), "d.yaml")
    assert f"d.yaml:{where}" in str(err.value)


def test_compiles_to_closed_slots_and_the_longest_hold() -> None:
    a = load_text(pol("a", "  agentDown: closed\n  agentDownHold: 10\n"))[0]
    b = load_text(pol("b", "  agentDown: closed\n  agentDownHold: 40\n"))[0]
    c = load_text(pol("c"))[0]
    conf = compile_policies([(0, a), (3, b), (5, c)]).conf
    assert (conf.down_closed, conf.down_hold_ns) == (0b1001, 40 * S)
    row, gen = dec_conf(enc_conf(conf, 7))
    assert (row, gen) == (conf, 7)


def test_guard_rule() -> None:
    assert verdict(abi.ALIVE_NS - 1, 1, 0) is None                  # agent alive: never
    assert verdict(10 * S, 0b10, 30 * S) is None                    # closed, within hold
    v = verdict(30 * S, 0b10, 30 * S)
    assert v is not None and (v.action, v.slots) == ("killed", 0b10)
    assert verdict(OPEN_AFTER_NS - 1, 0, 0) is None                 # open: short grace
    v = verdict(OPEN_AFTER_NS, 0, 0)
    assert v is not None and v.action == "continued"
    assert journal_path("/sys/fs/bpf/moray") == "/run/moray/guard-sys-fs-bpf-moray.jsonl"


def _ev(action: int, arg: int, slots: int, enforced: int) -> EnforceEvent:
    proc = Proc(9, 9, 1, 0, 0, 0, 0, 77, 0, 0, "sh")
    return EnforceEvent(5, proc, abi.EKind.EXEC, action, slots, enforced, arg, 0, None, 0,
                        "/bin/busybox", "/bin/sh")


def test_events_name_the_agent_down_rule() -> None:
    closed = load_text(pol("shut", "  agentDown: closed\n  agentDownHold: 20s\n"))[0]
    opened = load_text(pol("web"))[0]
    by_slot = {0: closed, 1: opened}
    e = explain(_ev(abi.EAction.KILLED, abi.ARG_AGENT_DOWN, 1, 1), by_slot, {})
    assert (e["action"], e["policy"], e["rule"]) == (
        "killed", "shut", "agentDown: closed (agentDownHold: 20s)")
    assert "longer than agentDownHold" in e["note"]
    e = explain(_ev(abi.EAction.HELD, abi.ARG_AGENT_DOWN, 1, 0), by_slot, {})
    assert (e["action"], e["rule"]) == ("held", "agentDown: closed (agentDownHold: 20s)")
    assert "agent was down" in e["note"]
    e = explain(_ev(abi.EAction.UNCOVERED, 0, 2, 0), by_slot, {})
    assert (e["action"], e["policy"], e["rule"]) == ("uncovered", "web", "agentDown: open")
    assert "without these policies" in e["note"]


def test_guard_refusals_are_reported_from_its_journal(tmp_path: Path) -> None:
    j = tmp_path / "guard.jsonl"
    j.write_text(json.dumps({"pid": 42, "cgroup_id": 7, "start_ns": 1, "held_ts": 2,
                             "ts": 3, "action": "killed", "slots": 4, "deny": 0,
                             "comm": "sh", "exe": "/bin/busybox"}) + "\n"
                 + json.dumps({"pid": 43, "cgroup_id": 8, "start_ns": 1, "held_ts": 2,
                               "ts": 3, "action": "continued", "slots": 0, "deny": 0})
                 + "\n")
    got: list[Decision] = []
    h = Holds(applier=None, resolver=None, emit=got.append)  # type: ignore[arg-type]
    assert h.report_journal(str(j)) == 1
    assert not j.exists()
    ev = got[0].event
    assert (ev.proc.pid, ev.action, ev.policies, ev.enforced, ev.arg, ev.path, ev.ts) == (
        42, abi.EAction.KILLED, 4, 4, abi.ARG_AGENT_DOWN, "/bin/busybox", 3)
