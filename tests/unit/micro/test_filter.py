"""Plan -> classic BPF (moray/micro/filter.py): the assembled program run through the
module's cBPF evaluator on the calls a workload makes."""

from __future__ import annotations

import pytest

from moray.api.policy.load import load_text
from moray.api.policy.syscalls import X86_64 as NR
from moray.micro import filter as bpf
from moray.micro import rules
from moray.micro.rules import Action, Branch, Check, Op, Plan, SyscallRule

SUP = 777
POLICY = """
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: lock}
spec:
  scope: {host: true}
  exec: {deny: [/bin/nc], drift: block}
  files: {deny: [/etc/shadow]}
  network: {egress: {deny: ["10.0.0.0/8"]}}
  syscalls: {deny: [ptrace, mount, bpf]}
"""


@pytest.fixture(scope="module")
def prog() -> list[bpf.Insn]:
    return bpf.assemble(rules.plan(load_text(POLICY), SUP))


def test_notified_refused_allowed(prog: list[bpf.Insn]) -> None:
    run = bpf.run
    for name in ("execve", "execveat", "open", "openat", "openat2", "creat", "connect",
                 "sendmsg", "sendmmsg", "pidfd_send_signal"):
        assert run(prog, NR[name]) == Action.NOTIFY, name
    for name in ("ptrace", "mount", "bpf", "io_uring_setup"):
        assert run(prog, NR[name]) == Action.ERRNO_EPERM, name
    for name in ("read", "write", "close", "getpid", "clone", "fork", "socket", "mprotect",
                 "umount2", "unshare"):
        assert run(prog, NR[name]) == Action.ALLOW, name


def test_argument_checks(prog: list[bpf.Insn]) -> None:
    run = bpf.run
    # sendto: notified only with a destination (64-bit pointer, either half non-zero)
    assert run(prog, NR["sendto"], [3, 0x1000, 10, 0, 0, 0]) == Action.ALLOW
    assert run(prog, NR["sendto"], [3, 0x1000, 10, 0, 0x7FFD_0000_0000, 16]) == Action.NOTIFY
    assert run(prog, NR["sendto"], [3, 0x1000, 10, 0, 0x1234, 16]) == Action.NOTIFY
    # mmap: PROT_EXEC of a file (fd != -1) only
    assert run(prog, NR["mmap"], [0, 4096, 5, 2, 3, 0]) == Action.NOTIFY
    assert run(prog, NR["mmap"], [0, 4096, 5, 0x22, -1, 0]) == Action.ALLOW
    assert run(prog, NR["mmap"], [0, 4096, 3, 2, 3, 0]) == Action.ALLOW
    # the supervisor guard: only calls aimed at it
    assert run(prog, NR["kill"], [SUP, 9]) == Action.NOTIFY
    assert run(prog, NR["kill"], [-1, 15]) == Action.NOTIFY
    assert run(prog, NR["kill"], [SUP + 1, 9]) == Action.ALLOW
    assert run(prog, NR["kill"], [0, 9]) == Action.ALLOW   # its own group: not the supervisor's
    assert run(prog, NR["tgkill"], [SUP, SUP, 9]) == Action.NOTIFY
    assert run(prog, NR["tgkill"], [5, 5, 9]) == Action.ALLOW
    assert run(prog, NR["pidfd_open"], [SUP, 0]) == Action.NOTIFY
    assert run(prog, NR["pidfd_open"], [SUP + 1, 0]) == Action.ALLOW


def test_other_abis_are_refused(prog: list[bpf.Insn]) -> None:
    # int 0x80 from a 64-bit process: i386 numbers (11 = execve there)
    assert bpf.run(prog, 11, arch=0x40000003) == Action.ERRNO_EPERM
    # x32: numbers with bit 30 set
    assert bpf.run(prog, NR["execve"] | 0x40000000) == Action.ERRNO_EPERM
    assert bpf.run(prog, 520 | 0x40000000) == Action.ERRNO_EPERM


def test_every_plan_rule_is_reachable(prog: list[bpf.Insn]) -> None:
    plan = rules.plan(load_text(POLICY), SUP)
    for r in plan.rules:
        if not r.branches:
            assert bpf.run(prog, r.nr) == r.default, r.name


def test_branches_in_order_and_jump_limits() -> None:
    plan = Plan((SyscallRule(NR["kill"], "kill", (
        Branch((Check(0, Op.EQ32, 1), Check(1, Op.EQ32, 9)), Action.ERRNO_EPERM),
        Branch((Check(0, Op.EQ32, 1),), Action.NOTIFY)), Action.ALLOW),), ())
    prog = bpf.assemble(plan)
    assert bpf.run(prog, NR["kill"], [1, 9]) == Action.ERRNO_EPERM
    assert bpf.run(prog, NR["kill"], [1, 15]) == Action.NOTIFY
    assert bpf.run(prog, NR["kill"], [2, 9]) == Action.ALLOW
    assert all(0 <= i.jt <= 255 and 0 <= i.jf <= 255 for i in prog)
    assert len(prog[0].pack()) == 8
    # every syscall of the table at once still assembles (jumps stay short: one block each)
    big = Plan(tuple(SyscallRule(nr, n, default=Action.NOTIFY)
                     for n, nr in sorted(NR.items(), key=lambda x: x[1])), ())
    code = bpf.assemble(big)
    assert len(code) < 4096   # BPF_MAXINSNS
    assert bpf.run(code, NR["read"]) == Action.NOTIFY


def test_namespace_and_setid_arguments() -> None:
    pol = load_text("""
apiVersion: moray/v1
kind: RuntimePolicy
metadata: {name: n}
spec:
  scope: {host: true}
  namespaces: {deny: [user]}
  setid: {deny: [setuid, setgid]}
""")
    prog = bpf.assemble(rules.plan(pol, SUP))
    run = bpf.run
    fork_flags = 0x01200011   # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
    assert run(prog, NR["clone"], [fork_flags]) == Action.ALLOW
    assert run(prog, NR["clone"], [fork_flags | 0x10000000]) == Action.NOTIFY
    assert run(prog, NR["unshare"], [0x00020000]) == Action.ALLOW        # mount: not denied
    assert run(prog, NR["unshare"], [0x10000000]) == Action.NOTIFY
    assert run(prog, NR["clone3"], [0, 88]) == Action.ERRNO_ENOSYS
    assert run(prog, NR["chmod"], [0x1000, 0o755]) == Action.ALLOW
    assert run(prog, NR["chmod"], [0x1000, 0o4755]) == Action.NOTIFY
    assert run(prog, NR["fchmodat"], [3, 0x1000, 0o2755]) == Action.NOTIFY
    assert run(prog, NR["openat"], [3, 0x1000, 0o101, 0o4755]) == Action.NOTIFY   # O_CREAT
    assert run(prog, NR["openat"], [3, 0x1000, 0o1, 0o4755]) == Action.ALLOW      # no O_CREAT
    assert run(prog, NR["openat"], [3, 0x1000, 0o101, 0o644]) == Action.ALLOW
