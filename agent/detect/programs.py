"""Which of the detection programs (bpf/progs/syscalls_obs.bpf.c, names `mr_so_*`) load
on this kernel, and which the loaded rules need.

A syscall tracepoint the kernel does not have (finit_module without module support,
fchmodat2 before 6.6) is skipped instead of failing the agent's start-up, and the raw
sys_exit fallback for module loads is kept only when those tracepoints are missing.

Issue 18: a program no loaded rule looks at is not loaded at all (`unused`): the rules are
read once, at start-up (step load_rules, before load_bpf), so a syscall no rule names
costs nothing, and the module fallback (tp_btf/sys_exit: every syscall of the host) runs
only when a rule names init_module or finit_module. Syscall events are therefore reported
for the syscalls the rules look at (docs/events.md)."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable

PREFIX = "mr_so_"
RAW_MODULE = "mr_so_raw_module"
EXEC_PROGRAM = "mr_so_exec"          # the syscall event "execve" (sched_process_exec)
MODULE_SYSCALLS = frozenset({"init_module", "finit_module"})
# syscall name (as rules and events name it) -> its tracepoint's name, where they differ
TRACEPOINT_NAME = {"umount2": "umount"}


def _tracepoint_exists(tracefs: str, section: str) -> bool:
    _, _, rest = section.partition("/")  # tracepoint/<category>/<name>
    return os.path.isdir(os.path.join(tracefs, "events", rest))


def programs_to_skip(programs: Iterable[tuple[str, str]],
                     tracefs: str = "/sys/kernel/tracing") -> list[str]:
    skip: list[str] = []
    have_module_tp = _tracepoint_exists(tracefs, "tracepoint/syscalls/sys_exit_finit_module")
    for name, section in programs:
        if not name.startswith(PREFIX):
            continue
        if name == RAW_MODULE:
            if have_module_tp:
                skip.append(name)
        elif section.startswith("tracepoint/") and not _tracepoint_exists(tracefs, section):
            skip.append(name)
    return sorted(skip)


def unused(programs: Iterable[str], syscalls: Collection[str] | None) -> list[str]:
    """The `mr_so_*` programs no rule needs. *syscalls*: the syscall names the loaded
    rules can match (agent/detect/plan.py RuleSet.by_syscall); None: a rule matches every
    syscall, so every program is needed."""
    if syscalls is None:
        return []
    tps = {TRACEPOINT_NAME.get(n, n) for n in syscalls}
    out = []
    for name in programs:
        if not name.startswith(PREFIX):
            continue
        if name == RAW_MODULE:
            used = bool(MODULE_SYSCALLS & set(syscalls))
        elif name == EXEC_PROGRAM:
            used = "execve" in syscalls
        elif name.startswith(("mr_so_in_", "mr_so_out_")):
            used = name.split("_", 3)[3] in tps
        else:
            used = True
        if not used:
            out.append(name)
    return sorted(out)


def same_code(programs: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Programs of one C body (syscalls_obs.bpf.c EXIT: every sys_exit program is
    `sysobs_exit(ctx->ret)`), loaded once and attached at each tracepoint."""
    return (tuple(sorted(n for n in programs if n.startswith("mr_so_out_"))),)
