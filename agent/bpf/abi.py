"""The one Python mirror of the C records in bpf/lib/abi.h.

Each `Layout` lists the C struct's members in order with a `struct` format code (or a
nested Layout). From it come a precompiled little-endian `struct.Struct` for the fixed
part (decoding is one `unpack_from` per record) and member offsets, which
tests/unit/test_abi.py compares with the BTF of the built object: if the C side changes
and this file does not, the test fails instead of the agent misreading events.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Union

Code = Union[str, "Layout"]


@dataclass(frozen=True)
class Layout:
    c_name: str
    members: tuple[tuple[str, Code], ...]
    fmt: str = field(init=False)
    size: int = field(init=False)
    offsets: dict[str, int] = field(init=False)
    index: dict[str, int] = field(init=False)  # flat field name -> position in unpack()

    def __post_init__(self) -> None:
        fmt = ""
        offsets: dict[str, int] = {}
        index: dict[str, int] = {}
        pos = 0
        for name, code in self.members:
            offsets[name] = struct.calcsize("<" + fmt)
            if isinstance(code, Layout):
                for sub, i in code.index.items():
                    index[f"{name}.{sub}"] = pos + i
                pos += len(code.index)
                fmt += code.fmt
            else:
                if not code.endswith("x"):  # padding has no value
                    index[name] = pos
                    pos += 1
                fmt += code
        object.__setattr__(self, "fmt", fmt)
        object.__setattr__(self, "size", struct.calcsize("<" + fmt))
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "index", index)

    def compile(self) -> struct.Struct:
        return struct.Struct("<" + self.fmt)


class Op(IntEnum):
    """enum mr_op"""

    EXEC = 1
    FORK = 2
    EXIT = 3
    OPEN = 4
    CONNECT = 5
    ACCEPT = 6
    LISTEN = 7
    SEND = 8
    CGROUP_MKDIR = 9
    CGROUP_RMDIR = 10
    ENFORCE = 11
    SYSCALL = 12
    REPEAT = 13  # a summary of repeats (progs/agg.bpf.c): struct mr_repeat + the record


class Stat(IntEnum):
    """enum mr_stat: indexes of the per-CPU counters in mr_stats."""

    RB_DROP = 0
    PATH_TRUNC = 1
    EVENTS = 2
    DIRCACHE_HIT = 3
    DIRCACHE_MISS = 4
    AGG = 5          # repeats counted in mr_agg instead of written
    AGG_FULL = 6     # mr_agg full: a first event not aggregated
    AGG_RETRY = 7    # a summary the ring refused: its count put back, sent later
    AGG_RACE = 8     # another task's open exit interleaved on the CPU: written in full
    DROP_BASE = 16   # + opcode: records of that type lost in the kernel (ring full)
    MAX = 32


# flags (MR_F_*)
F_ARGS_TRUNC = 1 << 0
F_BINARY_TRUNC = 1 << 1
F_CWD_TRUNC = 1 << 2
F_PATH_TRUNC = 1 << 3
F_PATH_RAW = 1 << 4
F_ROOT_PRIVATE = 1 << 5   # open: path from a root other than the host's

COMM_LEN = 16
WATCH_LEN = 256

HDR = Layout("mr_hdr", (("op", "H"), ("size", "H"), ("cpu", "I"), ("ts", "Q")))

PROC = Layout("mr_proc", (
    ("pid", "I"), ("tid", "I"), ("ppid", "I"), ("uid", "I"), ("euid", "I"), ("gid", "I"),
    ("mntns", "I"), ("pad", "4x"), ("cgroup_id", "Q"), ("start_ns", "Q"), ("pstart_ns", "Q"),
    ("comm", f"{COMM_LEN}s"),
))

EXEC = Layout("mr_exec", (
    ("hdr", HDR), ("proc", PROC), ("flags", "I"), ("argc", "I"), ("binary_len", "H"),
    ("filename_len", "H"), ("args_len", "H"), ("cwd_len", "H"),
))

FORK = Layout("mr_fork", (("hdr", HDR), ("proc", PROC)))

EXIT = Layout("mr_exit", (("hdr", HDR), ("proc", PROC), ("status", "I"), ("pad", "4x")))

OPEN = Layout("mr_open", (
    ("hdr", HDR), ("proc", PROC), ("flags", "I"), ("ret", "i"), ("pflags", "H"),
    ("path_len", "H"), ("pad", "4x"),
))

NET = Layout("mr_net", (
    ("hdr", HDR), ("proc", PROC), ("family", "H"), ("protocol", "H"), ("sport", "H"),
    ("dport", "H"), ("saddr", "16s"), ("daddr", "16s"),
))

# a summary of repeats: `count` events identical (but for their time) to the mr_open record
# that follows it, between first_ns and last_ns (bpf/lib/abi.h struct mr_repeat)
REPEAT = Layout("mr_repeat", (
    ("hdr", HDR), ("count", "Q"), ("first_ns", "Q"), ("last_ns", "Q"),
))
AGG_PATH = 256  # bpf/maps/agg.h MR_AGG_PATH: longer paths are not aggregated
AGG_KEY = Layout("mr_agg_key", (
    ("proc", PROC), ("flags", "I"), ("ret", "i"), ("pflags", "H"), ("path_len", "H"),
    ("pad", "4x"), ("path", f"{AGG_PATH}s"),
))
AGG_VAL = Layout("mr_agg_val", (
    ("count", "Q"), ("first_ns", "Q"), ("last_ns", "Q"), ("win_ns", "Q"),
))

CGROUP = Layout("mr_cgroup", (
    ("hdr", HDR), ("id", "Q"), ("level", "I"), ("path_len", "H"), ("pad", "2x"),
))

WATCH_KEY = Layout("mr_watch_key", (("prefixlen", "I"), ("path", f"{WATCH_LEN}s")))

class EKind(IntEnum):
    """enum mr_ekind: what an enforcement record is about."""

    EXEC = 1
    DRIFT = 2
    FILE = 3
    NET = 4
    SYSCALL = 5
    NS = 6        # issue 13: namespace creation / entry (progs/enforce_args.bpf.c)
    SETID = 7     # issue 13: setuid / setgid bit or file capabilities set
    LINK = 9     # a covered file or directory changed by identity (arg: syscall nr)


class EAction(IntEnum):
    """enum mr_eaction: what was done."""

    BLOCKED = 1
    KILLED = 2
    WOULD_BLOCK = 3
    HELD = 4
    # --- issue 13, agent down: made in user space only (never by the kernel)
    UNCOVERED = 16  # a new container ran without its policies while the agent was down


ENFORCE = Layout("mr_enforce", (
    ("hdr", HDR), ("proc", PROC), ("policies", "Q"), ("enforced", "Q"), ("kind", "H"),
    ("action", "H"), ("arg", "I"), ("family", "H"), ("port", "H"), ("path_len", "H"),
    ("path2_len", "H"), ("addr", "16s"),
))

# Policy maps (bpf/maps/policy.h): keys and values written by agent/policy/apply.py.
POL_MAX = 64
NET_RULES = 16
SYS_MAX = 512
PATH_KEY = 256
PC_HOLD = 1 << 0
# mr_enforce.arg of an exec record (issue 13, agent down): the exec was held or refused
# because the agent was down and an agentDown: closed policy could cover the new cgroup
ARG_AGENT_DOWN = 1 << 8  # above ExecVia (the low byte of an exec record's arg)
ALIVE_NS = 2_000_000_000  # MR_ALIVE_NS: a heartbeat older than this: the agent is gone
NS_MAX = 8      # issue 13: mr_pconf.ns[] (MR_NS_*)
SETID_MAX = 4   # issue 13: mr_pconf.setid[] (MR_SETID_*)
SETID_UID, SETID_GID, SETID_CAPS = 0, 1, 2

PCONF = Layout("mr_pconf", (
    ("active", "Q"), ("enforce", "Q"), ("host", "Q"), ("exec", "Q"), ("drift", "Q"),
    ("exec_allow", "Q"), ("files", "Q"), ("net", "Q"), ("net_allow", "Q"), ("syscalls", "Q"),
    ("gen", "I"), ("flags", "I"),
    # --- issue 13, agent down (spec.agentDown): slots with agentDown: closed; the hold bound
    ("down_closed", "Q"), ("down_hold_ns", "Q"),
    # issue 13: arrays as raw bytes (u64 each, little-endian): apply.py packs them
    ("args", "Q"), ("ns", f"{8 * NS_MAX}s"), ("setid", f"{8 * SETID_MAX}s"),
))
PPATH_KEY = Layout("mr_ppath_key", (("prefixlen", "I"), ("path", f"{PATH_KEY}s")))
PEXEC_VAL = Layout("mr_pexec_val", (("deny", "Q"), ("allow", "Q")))
PFILE_VAL = Layout("mr_pfile_val", (
    ("deny_read", "Q"), ("deny_write", "Q"), ("mon_read", "Q"), ("mon_write", "Q")))
PNET_KEY = Layout("mr_pnet_key", (
    ("prefixlen", "I"), ("family", "B"), ("pad", "3x"), ("addr", "16s")))
PNET_RULE = Layout("mr_pnet_rule", (
    ("deny", "Q"), ("allow", "Q"), ("port_lo", "H"), ("port_hi", "H"), ("proto", "B"),
    ("pad", "3x")))
PPEND = Layout("mr_ppend", (("mask", "Q"), ("ts", "Q")))
PINO_KEY = Layout("mr_pino_key", (("dev", "Q"), ("ino", "Q")))
PINO_VAL = Layout("mr_pino_val", (
    ("deny_read", "Q"), ("deny_write", "Q"), ("mon_read", "Q"), ("mon_write", "Q"),
    ("exec_deny", "Q")))
EF_IDENT = 1 << 8  # mr_enforce.arg (file): matched by identity; (dev, ino) in addr
PHOLD = Layout("mr_phold", (
    ("cgroup_id", "Q"), ("start_ns", "Q"), ("exec_deny", "Q"), ("drift", "Q"), ("ts", "Q")))

# Observed syscalls (progs/syscalls_obs.bpf.c): flags MR_SO_*
SO_STDIN_SOCK = 1 << 0
SO_STDOUT_SOCK = 1 << 1
SO_STDERR_SOCK = 1 << 2
SO_UPPER = 1 << 3
SO_PATH_FD = 1 << 4
SO_PATH_TRUNC = 1 << 5
SO_TMPFS = 1 << 6
SO_STDIN_PIPE = 1 << 7  # exec: fd 0 a pipe/FIFO, binary an interpreter; arg0 = argc

SYSOBS = Layout("mr_sysobs", (
    ("hdr", HDR), ("proc", PROC), ("ret", "q"), ("arg0", "Q"), ("arg1", "Q"), ("arg2", "Q"),
    ("arg3", "Q"), ("nr", "I"), ("flags", "H"), ("family", "H"), ("port", "H"),
    ("path_len", "H"), ("path2_len", "H"), ("path3_len", "H"), ("addr", "16s"),
))

ALL: tuple[Layout, ...] = (HDR, PROC, EXEC, FORK, EXIT, OPEN, NET, CGROUP, WATCH_KEY, ENFORCE,
                           PCONF, PPATH_KEY, PEXEC_VAL, PFILE_VAL, PNET_KEY, PNET_RULE, PPEND,
                           PHOLD, SYSOBS, PINO_KEY, PINO_VAL, REPEAT, AGG_KEY, AGG_VAL)


class ExecVia(IntEnum):
    """MR_EX_* (bpf/lib/abi.h): mr_enforce.arg of exec / drift records, how the file's code
    was reached (issue 13, bpf/progs/enforce_mmap.bpf.c)."""

    EXEC = 0      # execve / execveat of the file
    MMAP = 1      # mmap(PROT_EXEC): the dynamic loader, dlopen, LD_PRELOAD...
    MPROTECT = 2  # mprotect / pkey_mprotect adding PROT_EXEC to the file's mapping
    SCRIPT = 3    # kill tier: the interpreter of a `#!` exec opened the script


# issue 13, mount calls under a syscall rule (bpf/progs/enforce_sys.bpf.c): mr_enforce.family
# of a syscall record written at the call's exit; addr holds (flags u64, return value s64)
ES_RESULT = 1
