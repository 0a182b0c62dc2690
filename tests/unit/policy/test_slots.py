"""Names of slots across replacements and agent restarts (agent/policy/slots.py) and the
policy engine's use of them: the slot table saved before each flip, loaded and adopted
at start; records explained by the policy their slot held when they were made; held
execs decided by the slots the same policies hold now. Fake maps, no privileges."""

from __future__ import annotations

import json
from pathlib import Path

from moray.agent.bpf import abi
from moray.agent.events.types import EnforceEvent, Proc
from moray.agent.policy.apply import MAP_NAMES, Applier, dec_conf, u32
from moray.agent.policy.engine import PolicyEngine
from moray.agent.policy.explain import explain
from moray.agent.policy.slots import SlotHistory, default_path
from moray.api.policy.load import load_text

from .test_policy import FakeMap

A = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: pol-a}
spec:
  scope: {host: true}
  exec: {deny: [/usr/bin/head]}
"""
B = """apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: pol-b}
spec:
  scope: {containers: {}}
  mode: monitor
  files: {deny: [{path: /etc/shadow, access: read}]}
"""
A2 = A.replace("/usr/bin/head", "/usr/bin/tail")


class NoResolver:
    def lookup(self, cgroup_id: int, pid: int | None = None) -> None:
        return None


def _exec_ev(ts: int, slots: int, path: str) -> EnforceEvent:
    proc = Proc(1, 1, 0, 0, 0, 0, 0, 0, 0, 0, "x")
    return EnforceEvent(ts, proc, abi.EKind.EXEC, abi.EAction.KILLED, slots, slots, 0, 0,
                        None, 0, path, "")


def test_policy_at_is_the_entry_live_when_the_record_was_made() -> None:
    a, b = load_text(A, "a.yaml")[0], load_text(B, "b.yaml")[0]
    h = SlotHistory()
    assert h.record([(0, a)], since=100)
    assert not h.record([(0, a)], since=150)  # unchanged: no new entry
    h.record([(0, b)], since=300)
    assert h.policy_at(0, 99) is None
    assert h.policy_at(0, 100) is a and h.policy_at(0, 299) is a
    assert h.policy_at(0, 300) is b
    assert dict(h.at(200)) == {0: a}


def test_save_load_round_trip_rebuilds_rules_and_ignores_other_maps(tmp_path: Path) -> None:
    path = str(tmp_path / "slots.json")
    a, b = load_text(A, "/etc/moray/policies/a.yaml")[0], load_text(B, "b.yaml")[0]
    h = SlotHistory(path, "mr_pconf#7")
    h.record([(0, a), (3, b)], since=100)
    h.save()
    got = SlotHistory(path, "mr_pconf#7")
    assert got.load() == 2
    ga, gb = got.policy_at(0, 100), got.policy_at(3, 100)
    assert ga == a and gb == b  # same name, mode, rules, digest
    assert ga is not None and ga.source == "/etc/moray/policies/a.yaml"
    ev = _exec_ev(150, 1, "/usr/bin/head")
    assert explain(ev, got.at(ev.ts), {})["rule"] == "exec.deny: /usr/bin/head"
    other = SlotHistory(path, "mr_pconf#8")  # the pins were recreated: not ours
    assert other.load() == 0 and other.policy_at(0, 100) is None
    assert default_path("/sys/fs/bpf/moray") == "/run/moray/slots-sys-fs-bpf-moray.json"


def _engine(maps: dict[str, FakeMap], pdir: Path, table: str) -> PolicyEngine:
    ap = Applier(maps, grace=0)  # type: ignore[arg-type]
    return PolicyEngine(ap, NoResolver(), str(pdir), status_file=None,
                        slots=SlotHistory(table, "mr_pconf#1"))


def _live(maps: dict[str, FakeMap]) -> int:
    idx = maps["mr_pgen"].d[u32(0)][0]
    return dec_conf(maps["mr_pconf"].d[u32(idx)])[0].active


def test_restart_names_records_of_the_old_policies_and_keeps_unchanged_slots(
        tmp_path: Path) -> None:
    """Agent 1 publishes pol-a (slot 0) and pol-b (slot 1), then dies; while it is down
    pol-a's file is replaced. Agent 2 (same maps, same table) names a record made before
    its publish by the OLD pol-a, keeps pol-b's slot, and gives the new pol-a a new slot;
    a record made after its publish names the new pol-a."""
    log: list[tuple[str, str, bytes]] = []
    maps = {n: FakeMap(log, n) for n in MAP_NAMES}
    pdir, table = tmp_path / "policies", str(tmp_path / "slots.json")
    pdir.mkdir()
    (pdir / "a.yaml").write_text(A)
    (pdir / "b.yaml").write_text(B)
    one = _engine(maps, pdir, table)
    one.reload(force=True)
    assert {n: s for n, (s, _) in one.active.items()} == {"pol-a": 0, "pol-b": 1}
    saved = json.loads(Path(table).read_text())
    assert {r["slot"] for r in saved["slots"]} == {0, 1}

    # the saved table is written before the flip: record the order of writes
    (pdir / "a.yaml").write_text(A2)  # replaced while the agent is down
    old_record = _exec_ev(one.slots.slots[0][-1][0] + 1, 1, "/usr/bin/head")

    two = _engine(maps, pdir, table)
    assert two.adopt_slots() == 2
    two.reload(force=True)
    assert two.active["pol-b"][0] == 1          # unchanged: same slot
    new_a = two.active["pol-a"][0]
    assert new_a not in (0, 1)                  # changed: a free slot
    assert _live(maps) == (1 << 1) | (1 << new_a)

    e = explain(old_record, two.policies_at(old_record.ts), {})
    assert (e["policy"], e["rule"], e["policies"][0]["mode"]) == (
        "pol-a", "exec.deny: /usr/bin/head", "enforce")
    after = _exec_ev(two.slots.slots[new_a][-1][0] + 1, 1 << new_a, "/usr/bin/tail")
    assert explain(after, two.policies_at(after.ts), {})["rule"] == "exec.deny: /usr/bin/tail"

    # a hold taken under agent 1's configuration: its slot 0 (old pol-a) is pol-a's new
    # slot now, pol-b keeps slot 1
    assert two._translate(0b11, old_record.ts) == (1 << new_a) | (1 << 1)


def test_the_table_is_on_disk_before_the_flip(tmp_path: Path) -> None:
    log: list[tuple[str, str, bytes]] = []
    maps = {n: FakeMap(log, n) for n in MAP_NAMES}
    pdir, table = tmp_path / "policies", tmp_path / "slots.json"
    pdir.mkdir()
    (pdir / "a.yaml").write_text(A)
    eng = _engine(maps, pdir, str(table))
    seen: list[bool] = []
    orig = maps["mr_pgen"].update

    def flip(key: bytes, value: bytes, flags: int = 0) -> None:
        seen.append(table.exists() and "pol-a" in table.read_text())
        orig(key, value, flags)

    maps["mr_pgen"].update = flip  # type: ignore[method-assign]
    eng.reload(force=True)
    assert seen == [True]
