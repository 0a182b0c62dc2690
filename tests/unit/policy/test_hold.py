"""Held execs (agent/policy/hold.py): a decision leaves as a typed Decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moray.agent.bpf import abi
from moray.agent.events.types import Decision, Proc
from moray.agent.policy.hold import Held, Holds


def test_a_decision_is_a_typed_event(tmp_path: Path) -> None:
    d = tmp_path / "77"
    d.mkdir()
    (d / "comm").write_bytes(b"nc\n")
    (d / "status").write_text("Name:\tnc\nPPid:\t12\nUid:\t1000\t1001\t1\t1\n"
                              "Gid:\t50\t50\t50\t50\n")
    (d / "exe").symlink_to("/bin/true")
    (d / "root").symlink_to("/")
    got: list[Decision] = []
    h = Holds(applier=None, resolver=None, proc=str(tmp_path),  # type: ignore[arg-type]
              emit=got.append)
    h._emit(Held(pid=77, cgroup_id=9, start_ns=5, exec_deny=1, drift=0, ts=0),
            abi.EKind.EXEC, abi.EAction.KILLED, 1, 1)
    (dec,) = got
    assert isinstance(dec, Decision)
    ev = dec.event
    want: dict[str, Any] = {"kind": abi.EKind.EXEC, "action": abi.EAction.KILLED,
                            "policies": 1, "enforced": 1, "path": "/bin/true", "path2": "",
                            "daddr": None}
    assert {k: getattr(ev, k) for k in want} == want
    assert ev.proc == Proc(pid=77, tid=77, ppid=12, uid=1000, euid=1001, gid=50, mntns=0,
                           cgroup_id=9, start_ns=5, pstart_ns=0, comm="nc")
