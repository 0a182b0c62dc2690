"""The explanation of enforcement decisions (agent/policy/explain.py): pure, golden.

Each case is one decision as the kernel (or a held exec's decision) reports it; the
golden file holds the `enforcement` object of each. MORAY_UPDATE_GOLDEN=1 rewrites it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent, Proc
from moray.agent.policy.explain import explain
from moray.api.policy.load import load_text

from .test_policy import HOST, WEB

GOLDEN = Path(__file__).parent / "golden" / "explain.json"
PROC = Proc(pid=40, tid=40, ppid=1, uid=0, euid=0, gid=0, mntns=1, cgroup_id=7,
            start_ns=5, pstart_ns=1, comm="sh")
TIERS = {"exec": "lsm", "file": "kill", "network": "cgroup", "syscall": "kill"}
E, A = abi.EKind, abi.EAction


def _ev(kind: int, action: int, policies: int, enforced: int, *, path: str = "",
        path2: str = "", arg: int = 0, family: int = 0, daddr: str | None = None,
        dport: int = 0) -> EnforceEvent:
    return EnforceEvent(ts=1, proc=PROC, kind=kind, action=action, policies=policies,
                        enforced=enforced, arg=arg, family=family, daddr=daddr, dport=dport,
                        path=path, path2=path2)


CASES: dict[str, EnforceEvent] = {
    "exec denied by prefix": _ev(E.EXEC, A.BLOCKED, 1, 1, path="/usr/bin/id",
                                 path2="/usr/bin/id"),
    "exec denied through a link's name (path2)": _ev(E.EXEC, A.KILLED, 0b100001, 1,
                                                      path="/usr/bin/nc.real",
                                                      path2="/usr/bin/nc"),
    "exec held": _ev(E.EXEC, A.HELD, 1, 0, path="/bin/sh", path2="/bin/sh"),
    "exec monitored (host policy)": _ev(E.EXEC, A.WOULD_BLOCK, 0b100000, 0,
                                        path="/usr/bin/nc", path2="nc"),
    "drift": _ev(E.DRIFT, A.KILLED, 1, 1, path="/tmp/x", path2="./x"),
    "file read denied": _ev(E.FILE, A.KILLED, 1, 1, path="/etc/shadow", arg=1),
    "file write monitored": _ev(E.FILE, A.WOULD_BLOCK, 1, 0, path="/etc/hosts", arg=2),
    "network denied": _ev(E.NET, A.BLOCKED, 1, 1, arg=6, family=2, daddr="10.2.3.4",
                          dport=443),
    "network monitored (host policy)": _ev(E.NET, A.WOULD_BLOCK, 0b100000, 0, arg=17,
                                           family=2, daddr="10.1.2.3", dport=53),
    "syscall denied": _ev(E.SYSCALL, A.KILLED, 1, 1, arg=101),
    "slot no longer known": _ev(E.FILE, A.BLOCKED, 0b100, 0b100, path="/x", arg=1),
}


def test_golden_explanations() -> None:
    web, host = load_text(WEB, "web.yaml")[0], load_text(HOST, "host.yaml")[0]
    slots = {0: web, 5: host}
    got: dict[str, Any] = {name: explain(ev, slots, TIERS) for name, ev in CASES.items()}
    if os.environ.get("MORAY_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_explain_is_pure() -> None:
    web = load_text(WEB, "web.yaml")[0]
    slots = {0: web}
    ev = CASES["file read denied"]
    assert explain(ev, slots, TIERS) == explain(ev, dict(slots), dict(TIERS))
    assert slots == {0: web}
