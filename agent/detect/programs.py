"""Which of the detection programs (bpf/progs/syscalls_obs.bpf.c, names `mr_so_*`) load
on this kernel: a syscall tracepoint the kernel does not have (finit_module without module
support, fchmodat2 before 6.6) is skipped instead of failing the agent's start-up, and the
raw sys_exit fallback for module loads is kept only when those tracepoints are missing."""

from __future__ import annotations

import os
from collections.abc import Iterable

PREFIX = "mr_so_"
RAW_MODULE = "mr_so_raw_module"


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
