"""Held execs (agent/policy/hold.py): a decision leaves as a typed Decision."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

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


class _Map:
    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}

    def keys(self) -> list[bytes]:
        return list(self.rows)

    def lookup(self, k: bytes) -> bytes | None:
        return self.rows.get(k)

    def delete(self, k: bytes) -> None:
        self.rows.pop(k, None)

    def update(self, k: bytes, v: bytes) -> None:
        self.rows[k] = v


class _Applier:
    def __init__(self) -> None:
        self.maps = {"mr_ppend": _Map(), "mr_phold": _Map(), "mr_pscope": _Map()}

    def set_scope(self, cg: int, mask: int) -> None:
        self.maps["mr_pscope"].update(struct.pack("<Q", cg), struct.pack("<Q", mask))


class _NoContainer:
    def lookup(self, cgroup_id: int, pid: int | None = None) -> None:
        return None


def test_a_cgroup_runc_made_stays_pending_until_its_state_is_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cgroup where runc's init was seen is not declared a host cgroup when its state is
    late (seen under heavy load: the container's first exec then ran as a host task)."""
    from moray.agent.policy import hold

    ap = _Applier()
    h = Holds(applier=ap, resolver=_NoContainer())  # type: ignore[arg-type]
    now = 100 * 10**9
    monkeypatch.setattr(hold, "boot_ns", lambda: now)
    for cg in (7, 8):   # both pending for 5 s, nothing held there now
        ap.maps["mr_ppend"].update(struct.pack("<Q", cg),
                                    abi.PPEND.compile().pack(0, now - 5 * 10**9))
    h.runtime_made[7] = now - 5 * 10**9
    assert h.classify({}, []) == 1                       # 8: a host cgroup
    assert ap.maps["mr_ppend"].keys() == [struct.pack("<Q", 7)]
    now += hold.MAX_HOLD_NS                              # 7: runc never wrote its state
    assert h.classify({}, []) == 1 and not h.runtime_made
