"""Held execs (agent/policy/hold.py): a decision leaves as a typed event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent, Proc
from moray.agent.policy.hold import Held, HeldPaths, Holds


def test_a_decision_is_a_typed_event_naming_the_held_paths(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "comm").write_bytes(b"nc\n")
    (tmp_path / "77" / "status").write_text("Name:\tnc\nPPid:\t12\nUid:\t1000\t1001\t1\t1\n"
                                            "Gid:\t50\t50\t50\t50\n")
    got: list[EnforceEvent] = []
    paths = HeldPaths()
    held_rec = EnforceEvent(ts=1, proc=Proc(77, 77, 12, 0, 0, 0, 1, 9, 5, 1, "sh"),
                            kind=abi.EKind.EXEC, action=abi.EAction.HELD, policies=1,
                            enforced=0, arg=0, family=0, daddr=None, dport=0,
                            path="/usr/bin/nc.real", path2="/usr/bin/nc")
    paths.note(held_rec)
    h = Holds(applier=None, resolver=None, proc=str(tmp_path),  # type: ignore[arg-type]
              emit=got.append, paths=paths)
    h._emit(Held(pid=77, cgroup_id=9, start_ns=5, exec_deny=1, drift=0, ts=0),
            abi.EKind.EXEC, abi.EAction.KILLED, 1, 1)
    (ev,) = got
    assert isinstance(ev, EnforceEvent)
    want: dict[str, Any] = {"kind": abi.EKind.EXEC, "action": abi.EAction.KILLED,
                            "policies": 1, "enforced": 1, "path": "/usr/bin/nc.real",
                            "path2": "/usr/bin/nc", "daddr": None}
    assert {k: getattr(ev, k) for k in want} == want
    assert ev.proc == Proc(pid=77, tid=77, ppid=12, uid=1000, euid=1001, gid=50, mntns=0,
                           cgroup_id=9, start_ns=5, pstart_ns=0, comm="nc")
    assert paths.pop(77) is None  # used once
