"""Hook kinds and shared code (issue 18) against the built object: every enforcement
program has one kind (or is scope bookkeeping), and programs loaded once for several
tracepoints really are one body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moray.agent.app import FILE_EXIT_PROGRAMS
from moray.agent.bpf.loader import BpfObject, object_path
from moray.agent.detect import programs as detect_programs
from moray.agent.policy.compile import ConfRow
from moray.agent.policy.programs import (
    KINDS,
    SAME_CODE,
    SCOPE_PROGRAMS,
    is_enforcement,
    kinds_needed,
)


@pytest.fixture(scope="module")
def obj() -> Iterator[BpfObject]:
    o = BpfObject.open(object_path("moray.bpf.o"))
    yield o
    o.close()


def test_every_enforcement_program_has_one_kind(obj: BpfObject) -> None:
    kinds = [p for progs in KINDS.values() for p in progs]
    assert len(kinds) == len(set(kinds))
    names = {n for n, _s, _p in obj.programs()}
    enforcing = {n for n in names if is_enforcement(n)}
    assert enforcing - set(kinds) == set(SCOPE_PROGRAMS)
    assert set(kinds) <= names  # no stale name in the table


def test_shared_programs_are_one_body(obj: BpfObject) -> None:
    names = [n for n, _s, _p in obj.programs()]
    sections = {n: s for n, s, _p in obj.programs()}
    groups = (*SAME_CODE, *detect_programs.same_code(names), FILE_EXIT_PROGRAMS)
    assert len(detect_programs.same_code(names)[0]) > 20
    for group in groups:
        first = obj.insns(group[0])
        for n in group:
            assert sections[n].startswith("tracepoint/syscalls/sys_exit_") or \
                sections[n].startswith("tracepoint/syscalls/sys_enter_"), n
            assert sections[n].split("_")[1] == sections[group[0]].split("_")[1]
            assert obj.insns(n) == first, f"{n} is not the same code as {group[0]}"


def test_kinds_follow_the_rules() -> None:
    assert not any(kinds_needed(ConfRow()).values())
    files = kinds_needed(ConfRow(active=0b10, files=0b10))
    assert {k for k, v in files.items() if v} == {"exec", "file", "file-change"}
    # at stop only what an enforcing (or agentDown: closed) policy needs stays
    monitor = ConfRow(active=0b1, files=0b1, syscalls=0b1)
    assert not any(kinds_needed(monitor, enforcing=True).values())
    enforce = ConfRow(active=0b11, enforce=0b10, files=0b1, syscalls=0b10)
    kept = {k for k, v in kinds_needed(enforce, enforcing=True).items() if v}
    assert kept == {"exec", "syscall"}


def test_detection_programs_follow_the_rules() -> None:
    progs = ["mr_so_in_ptrace", "mr_so_out_ptrace", "mr_so_in_umount", "mr_so_out_umount",
             "mr_so_raw_module", "mr_so_exec", "mr_exec"]
    assert detect_programs.unused(progs, None) == []
    assert detect_programs.unused(progs, {"umount2", "finit_module"}) == [
        "mr_so_exec", "mr_so_in_ptrace", "mr_so_out_ptrace"]
    assert detect_programs.unused(progs, set()) == sorted(p for p in progs if p != "mr_exec")
