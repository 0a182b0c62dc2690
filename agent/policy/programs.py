"""Which enforcement programs of moray.bpf.o load on this kernel (DESIGN.md §2 tiers).

Exactly one program per enforcement hook is loaded: the BPF LSM one where BPF LSM is usable
(features.Features.bpf_lsm: the programs load *and* `bpf` is an active LSM), otherwise the
tracepoint fallback that kills. One exception: the exec tracepoint program loads on both
tiers, because a new container's first exec is held (SIGSTOP) after exec, never in the LSM
hook (bpf/progs/enforce_exec.bpf.c explains why); with `cfg_exec_lsm` set it only holds.
LSM programs are never loaded where the probe says no: on a kernel where they fail with
EPERM (this project's machines) loading them would fail the whole object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

# LSM program -> the fallback programs that do the same job without BPF LSM
LSM_FALLBACKS: dict[str, tuple[str, ...]] = {
    "mr_lsm_exec": (),   # mr_enf_exec stays: it takes the holds (cfg_exec_lsm)
    "mr_lsm_file_open": ("mr_enf_openat", "mr_enf_open", "mr_enf_openat2", "mr_enf_creat"),
    # issue 13, code mapped executable (bpf/progs/enforce_mmap.bpf.c): the LSM tier needs
    # none of the kill tier's mapping and script programs (bprm_check_security sees scripts)
    "mr_lsm_mmap": ("mr_enf_mmap", "mr_enf_mprotect", "mr_enf_pkeyprot", "mr_enf_script",
                    "mr_enf_sc_open", "mr_enf_sc_oat", "mr_enf_sc_oat2", "mr_enf_sx_open",
                    "mr_enf_sx_oat", "mr_enf_sx_oat2"),
    "mr_lsm_mprotect": (),
    "mr_lsm_ident_perm": ("mr_enf_ctime", "mr_enf_ctime_mg"),
    # issue 13: mr_enf_args stays on the LSM tier for what has no LSM hook (namespaces
    # other than user ones, setns); with cfg_exec_lsm it leaves the rest to these
    "mr_lsm_userns": (),
    "mr_lsm_chmod": (),
    "mr_lsm_mknod": (),
    "mr_lsm_setxattr": (),
}

# Programs on tracepoints that not every kernel has -> the BTF type naming the tracepoint
# (timestamp/* since 6.13: a covered file changed by identity, bpf/progs/enforce_ident.bpf.c).
# Where the type is missing the program is not loaded (it would fail the whole object).
NEEDS_BTF: dict[str, str] = {
    "mr_enf_ctime": "btf_trace_inode_set_ctime_to_ts",
    "mr_enf_ctime_mg": "btf_trace_ctime_ns_xchg",
    # io_uring's renames for the relative-open directory cache (bpf/progs/pathgen.bpf.c);
    # missing with CONFIG_IO_URING=n, where there is nothing to watch either
    "mr_pg_uring_sub": "btf_trace_io_uring_submit_req",     # 6.4+
    "mr_pg_uring_sqe": "btf_trace_io_uring_submit_sqe",     # before 6.4
    "mr_pg_uring_done": "btf_trace_io_uring_complete",
}

# fmod_ret programs on security_* functions (bpf/progs/enforce_ident.bpf.c): the
# file-change tier where BPF LSM is not usable but BPF trampolines are (features.fmod_ret);
# they replace the kill tier's ctime tracepoints. Each needs its function in the kernel's
# BTF (security_path_* only exist with CONFIG_SECURITY_PATH).
FMOD_RET_FALLBACKS: dict[str, tuple[str, ...]] = {
    "mr_fmr_ident_perm": ("mr_enf_ctime", "mr_enf_ctime_mg"),
}

ENFORCE_PREFIXES = ("mr_enf_", "mr_lsm_", "mr_fmr_")

# Loaded always, attached only while a live policy has a rule of their kind (the policy
# applier switches them, agent/bpf/pins.py OnDemandLink): mr_enf_sys runs on every syscall
# of the host, and merely being attached cost ~20 points on an open/close loop (measured
# 2026-12-06, no syscall rule anywhere: 1.13 us per open+close attached, 0.96-0.99 us not,
# 0.59-0.65 us without the agent; docs/policy.md).
SYSCALL_PROGRAM = "mr_enf_sys"
# Kill tier of exec rules for code mapped executable and scripts (enforce_mmap.bpf.c):
# tracepoints on mmap, mprotect and the opens, attached only while a live policy has an
# exec rule (deny, allow-list or drift), like mr_enf_sys.
EXEC_MAP_PROGRAMS = ("mr_enf_mmap", "mr_enf_mprotect", "mr_enf_pkeyprot", "mr_enf_script",
                     "mr_enf_sc_open", "mr_enf_sc_oat", "mr_enf_sc_oat2", "mr_enf_sx_open",
                     "mr_enf_sx_oat", "mr_enf_sx_oat2")

# issue 13: the namespace / setid program is on raw sys_enter too
ARGS_PROGRAM = "mr_enf_args"
# mount calls' exit records (enforce_sys.bpf.c MOUNT_EXIT): written for mr_enf_sys's verdicts
MOUNT_EXIT_PROGRAMS = ("mr_enf_mx_mount", "mr_enf_mx_umount", "mr_enf_mx_open_tree",
                       "mr_enf_mx_move_mount", "mr_enf_mx_fsmount", "mr_enf_mx_mount_setattr")
FILE_OPEN_PROGRAMS = ("mr_enf_openat", "mr_enf_open", "mr_enf_openat2", "mr_enf_creat")

# issue 18: every enforcement program belongs to one hook kind, attached only while a live
# policy has a rule of that kind (the policy applier switches a kind on before the
# publishing flip that needs it and off after the one that removed its last rule,
# agent/bpf/pins.py Hooks), and left pinned at stop only while an enforcing policy needs
# it. With no policy no enforcement program runs. One kind per line: its programs on both
# tiers (only those this kernel loads are attached) and, in KIND_NEEDS, the mr_pconf
# masks of the slots that need it.
KINDS: dict[str, tuple[str, ...]] = {
    # exec rules, and the hold of a new container's first exec (any policy may be scoped to
    # containers, agentDown): every policy needs it
    "exec": ("mr_enf_exec", "mr_lsm_exec"),
    "exec-mapped": (*EXEC_MAP_PROGRAMS, "mr_lsm_mmap", "mr_lsm_mprotect"),
    "file": (*FILE_OPEN_PROGRAMS, "mr_lsm_file_open"),
    "file-change": ("mr_enf_ctime", "mr_enf_ctime_mg", "mr_lsm_ident_perm",
                    "mr_lsm_ident_link", "mr_lsm_ident_chmod", "mr_lsm_ident_chown",
                    "mr_fmr_ident_perm", "mr_fmr_ident_link", "mr_fmr_ident_chmod",
                    "mr_fmr_ident_chown"),
    "network": ("mr_enf_connect4", "mr_enf_connect6", "mr_enf_sendmsg4", "mr_enf_sendmsg6"),
    "syscall": (SYSCALL_PROGRAM, *MOUNT_EXIT_PROGRAMS, "mr_lsm_mount", "mr_lsm_move_mount",
                "mr_lsm_umount"),
    "args": (ARGS_PROGRAM, "mr_lsm_userns", "mr_lsm_chmod", "mr_lsm_mknod",
             "mr_lsm_setxattr"),
}
# Scope bookkeeping (enforce_cgroup.bpf.c: a new cgroup is marked pending, so that a
# container started with no policy is still classified when one arrives): on cgroup
# mkdir/rmdir only, never on the syscall path; always attached and pinned.
SCOPE_PROGRAMS = ("mr_enf_cgmkdir", "mr_enf_cgrmdir")
ON_DEMAND = tuple(p for progs in KINDS.values() for p in progs)
# The same C body under several tracepoints of one context: loaded once, attached at each
# (agent/bpf/loader.py BpfObject.share; tests/unit/policy/test_programs_kinds.py checks
# that the instructions are the same)
SAME_CODE: tuple[tuple[str, ...], ...] = (
    FILE_OPEN_PROGRAMS, MOUNT_EXIT_PROGRAMS, ("mr_enf_sx_open", "mr_enf_sx_oat", "mr_enf_sx_oat2"))


def kind_needs(conf: Any) -> dict[str, int]:
    """Per kind, the slots of *conf* (a ConfRow: mr_pconf's fields) whose rules need it."""
    a = conf.active
    return {"exec": a, "exec-mapped": a & conf.exec, "file": a & conf.files,
            "file-change": a & conf.files, "network": a & (conf.net | conf.net_allow),
            "syscall": a & conf.syscalls, "args": a & conf.args}


def kinds_needed(conf: Any, enforcing: bool = False) -> dict[str, bool]:
    """Per kind, whether a live rule needs it; *enforcing*: a rule of a slot in enforce
    mode or with agentDown: closed (what must keep running while the agent is down)."""
    keep = (conf.enforce | conf.down_closed) if enforcing else ~0
    return {k: bool(m & keep) for k, m in kind_needs(conf).items()}


def is_enforcement(program: str) -> bool:
    """Programs that enforce policy (pinned so enforcement outlives the agent)."""
    return program.startswith(ENFORCE_PREFIXES)


def programs_to_skip(programs: Iterable[tuple[str, str]], bpf_lsm: bool,
                     has_btf: Callable[[str], bool] = lambda _n: True,
                     fmod_ret: bool = False,
                     has_func: Callable[[str], bool] = lambda _n: True) -> list[str]:
    """Names of (name, section) programs that must not load on this kernel. *has_btf*:
    whether the kernel's BTF has a type (typedef) of that name; *fmod_ret*: fmod_ret on
    security_* functions attaches here; *has_func*: the kernel's BTF has that function."""
    skip: list[str] = []
    for name, section in programs:
        need = NEEDS_BTF.get(name)
        if need is not None and not has_btf(need):
            skip.append(name)
        if section.startswith("fmod_ret/"):
            if bpf_lsm or not fmod_ret or not has_func(section.partition("/")[2]):
                skip.append(name)
            else:
                skip.extend(FMOD_RET_FALLBACKS.get(name, ()))
        if section.startswith("lsm/"):
            if not bpf_lsm:
                skip.append(name)
            else:
                skip.extend(LSM_FALLBACKS.get(name, ()))
    return sorted(set(skip))


def host_root(proc: str = "/proc") -> dict[str, int]:
    """Load-time settings of mr_enf_args (issue 13): the host's root directory (pid 1's),
    by which the kernel tells a container runtime setting up namespaces inside the
    container's cgroup (its root is still the host's) from the workload (pivoted into the
    container's root). Kernel dev_t = major << 20 | minor."""
    try:
        st = os.stat(f"{proc}/1/root/")
    except OSError as err:
        log.warning("host root unreadable (%s): namespace rules apply to container "
                    "runtimes setting containers up too", err)
        return {}
    return {"cfg_host_root_ino": st.st_ino,
            "cfg_host_root_dev": (os.major(st.st_dev) << 20) | os.minor(st.st_dev)}


def path_root(proc: str = "/proc", host_root: str = "/") -> dict[str, int]:
    """Load-time settings of the path walk (bpf/lib/path.h): the root a file event's path
    is "host" for. pid 1's root; where that is unreadable (pid 1 of another user
    namespace), the host root the agent was given (``--host-root``: "/" when it runs on
    the host, the host's / mounted into its container otherwise: a bind mount has the same
    inode and device)."""
    for where in (f"{proc}/1/root/", host_root):
        try:
            st = os.stat(where)
        except OSError:
            continue
        return {"cfg_path_root_ino": st.st_ino,
                "cfg_path_root_dev": (os.major(st.st_dev) << 20) | os.minor(st.st_dev)}
    log.warning("no root readable: file events do not tell private roots from the host's")
    return {}


# issue 13: LSM programs of the namespace / setid rules, by group; a group loads only where
# BPF LSM is usable and the kernel has every hook of it (userns_create is 6.1+, path_chmod
# and path_mknod need CONFIG_SECURITY_PATH), else mr_enf_args does its job (kill tier)
ARGS_LSM_GROUPS: dict[int, tuple[str, ...]] = {
    1: ("mr_lsm_userns",),                                     # MR_ARGS_LSM_USERNS
    2: ("mr_lsm_chmod", "mr_lsm_mknod", "mr_lsm_setxattr"),    # MR_ARGS_LSM_SETID
}
_HOOK_OF = {"mr_lsm_userns": "userns_create", "mr_lsm_chmod": "path_chmod",
            "mr_lsm_mknod": "path_mknod", "mr_lsm_setxattr": "inode_setxattr"}


def args_lsm(bpf_lsm: bool, btf_path: str = "/sys/kernel/btf/vmlinux") -> tuple[int, list[str]]:
    """(cfg_args_lsm bits, programs not to load): a group whose hooks the kernel's BTF
    does not list (no bpf_lsm_<hook> function) is left to the tracepoint program."""
    every = [p for g in ARGS_LSM_GROUPS.values() for p in g]
    if not bpf_lsm:
        return 0, every
    try:
        with open(btf_path, "rb") as f:
            names = f.read()
    except OSError as err:
        log.warning("kernel BTF unreadable (%s): namespace / setid rules on the kill tier", err)
        return 0, every
    bits = 0
    skip: list[str] = []
    for bit, progs in ARGS_LSM_GROUPS.items():
        if all(f"\0bpf_lsm_{_HOOK_OF[p]}\0".encode() in names for p in progs):
            bits |= bit
        else:
            skip.extend(progs)
    return bits, skip


# issue 13, mount calls under a syscall rule (bpf/progs/enforce_sys.bpf.c): where BPF LSM
# is usable and the kernel has these hooks, enforcing rules on mount, move_mount and
# umount2 refuse the call (EPERM) before anything is mounted; else mr_enf_sys kills after
ARGS_LSM_GROUPS[4] = ("mr_lsm_mount", "mr_lsm_move_mount", "mr_lsm_umount")  # MOUNT
_HOOK_OF.update({"mr_lsm_mount": "sb_mount", "mr_lsm_move_mount": "move_mount",
                 "mr_lsm_umount": "sb_umount"})
