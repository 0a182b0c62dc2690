"""Decoded kernel events: immutable records, one per record kind of bpf/lib/abi.h.

NamedTuples rather than frozen dataclasses (STYLE.md's default): every kernel record
becomes one or two of these on the agent's hot path, and a frozen dataclass costs ~1.5 us
to construct (one object.__setattr__ per field) against ~0.4 us for a NamedTuple —
measured; it was the largest single item in the decode profile.

These are the kernel's view (pids, cgroup ids, raw times); enrichment (process tree,
container identity) happens later in agent/enrich and the JSON shape in agent/output.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple


class EventType(StrEnum):
    EXEC = "exec"
    FORK = "fork"
    EXIT = "exit"
    OPEN = "open"
    CONNECT = "connect"
    ACCEPT = "accept"
    LISTEN = "listen"
    SEND = "send"
    ENFORCE = "enforce"
    SYSCALL = "syscall"


class Proc(NamedTuple):
    """The task an event is about. start_ns: its process's start (boot clock, ns)."""

    pid: int
    tid: int
    ppid: int
    uid: int
    euid: int
    gid: int
    mntns: int
    cgroup_id: int
    start_ns: int
    pstart_ns: int
    comm: str


class ExecEvent(NamedTuple):
    ts: int
    proc: Proc
    binary: str            # resolved path of the image that runs
    filename: str          # as passed to execve
    args: tuple[str, ...]
    argc: int
    args_truncated: bool
    cwd: str
    binary_truncated: bool
    type: EventType = EventType.EXEC


class ForkEvent(NamedTuple):
    ts: int
    proc: Proc  # the child
    type: EventType = EventType.FORK


class ExitEvent(NamedTuple):
    ts: int
    proc: Proc
    status: int  # wait(2) status

    @property
    def exit_code(self) -> int | None:
        return (self.status >> 8) & 0xFF if self.status & 0x7F == 0 else None

    @property
    def signal(self) -> int | None:
        sig = self.status & 0x7F
        return sig or None

    type: EventType = EventType.EXIT


class OpenEvent(NamedTuple):
    ts: int
    proc: Proc
    path: str
    flags: int
    ret: int               # fd, or -errno
    path_as_written: bool  # the open failed: path as the caller wrote it, not resolved
    truncated: bool
    private_root: bool = False  # resolved from a root other than the host's (bpf/lib/path.h)
    type: EventType = EventType.OPEN
    # a summary (bpf/progs/agg.bpf.c): (count, first_ns, last_ns) of the opens identical
    # to this one but for their time, counted in the kernel; ts is last_ns. None: one open.
    repeat: tuple[int, int, int] | None = None


class NetEvent(NamedTuple):
    type: EventType  # connect | accept | listen | send
    ts: int
    proc: Proc
    family: int
    protocol: int
    saddr: str | None
    sport: int
    daddr: str | None
    dport: int


class CgroupEvent(NamedTuple):
    created: bool
    ts: int
    id: int
    level: int
    path: str


class ImageHit(NamedTuple):
    """Why a new container's image is blocked (issue 16, agent/policy/images.py): the
    image as its runtime names it, the digest looked up, the verdict and its reasons."""

    image: str
    digest: str
    verdict: str           # non-compliant | unregistered
    reasons: tuple[str, ...]


class EnforceEvent(NamedTuple):
    """A policy acted (or, in monitor mode, would have): see bpf/lib/abi.h mr_enforce.

    policies: slots whose rule matched in scope; enforced: the ones that caused `action`.
    kind / action are agent.bpf.abi.EKind / EAction values. path: exec -> resolved binary,
    file -> resolved path; path2: exec -> filename as passed to execve. arg: syscall nr,
    file f_mode bits (1 read, 2 write) or IP protocol. ident: (dev, ino) of the file when the
    kernel matched it by identity (file, link kinds); dev in the kernel's encoding."""

    ts: int
    proc: Proc
    kind: int
    action: int
    policies: int
    enforced: int
    arg: int
    family: int
    daddr: str | None
    dport: int
    path: str
    path2: str
    type: EventType = EventType.ENFORCE
    ident: tuple[int, int] | None = None  # (dev, ino) of a file matched by identity
    value: int = 0   # issue 13: ns -> CLONE_NEW* flags asked for; setid -> the mode asked for;
    #                  mount-family syscall -> the call's flags
    ret: int | None = None  # issue 13: a mount-family syscall's return value (abi.ES_RESULT)
    image: ImageHit | None = None  # issue 16: a held exec killed for its image's verdict


class SyscallEvent(NamedTuple):
    """An observed syscall (bpf/lib/abi.h mr_sysobs), reported at exit with its result.

    nr: native syscall number (59 = execve for the exec-time checks). ret: result or
    -errno. args: the first four raw arguments. path / path2 / path3: the strings the
    syscall named (per syscall: docs/events.md). flags: agent.bpf.abi.SO_* bits. peer: the
    inet socket found on stdio (dup2/dup3, exec), as (family, address, port)."""

    ts: int
    proc: Proc
    nr: int
    ret: int
    args: tuple[int, int, int, int]
    flags: int
    family: int
    daddr: str | None
    dport: int
    path: str
    path2: str
    path3: str
    type: EventType = EventType.SYSCALL


KernelEvent = (ExecEvent | ForkEvent | ExitEvent | OpenEvent | NetEvent | EnforceEvent
               | SyscallEvent)
AnyEvent = KernelEvent | CgroupEvent


@dataclass(frozen=True, slots=True)
class Decision:
    """An enforcement decision made in user space: a task held at its first exec, killed
    or continued by agent/policy/hold.py. Queued typed (never as kernel bytes) behind the
    kernel records already read; the pipeline's decode stage turns it into the event.

    `event.path`/`path2` are what /proc showed at the decision; the kernel's HELD record
    of the same exec names the binary and the filename passed to execve, and replaces
    them when the pipeline has seen it (agent/pipeline/decode.py `HeldExecs`)."""

    event: EnforceEvent


@dataclass(frozen=True, slots=True)
class LossReport:
    """A `loss` event made in user space (agent/output/loss.py), already in its JSON shape:
    queued typed past the queue's bound and routed as it is by the pipeline."""

    event: dict[str, Any]
