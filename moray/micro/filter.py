"""A :class:`~moray.micro.rules.Plan` -> a classic BPF seccomp program, and installing it.

Why raw BPF through ctypes, and not a libseccomp binding: the MicroEnforcer is copied
into other people's images, so it should need nothing but Python and the kernel. PyPI's
pyseccomp is ctypes over ``libseccomp.so.2`` (a system library many slim and distroless
images lack, and its 0.1.2 of 2021 wraps receive/respond but not the ID_VALID check); Debian's
python3-seccomp is built for Debian's own interpreter, not the one in the image. The
program we need is small (an architecture check, one comparison per syscall, a few
argument tests), so we assemble it here (``assemble``, pure, unit-tested with a cBPF
interpreter in tests/unit/micro/test_filter.py) and install it with ``seccomp(2)``
(``SECCOMP_FILTER_FLAG_NEW_LISTENER`` returns the notification fd).

Layout: a call of another architecture (``int 0x80`` from a 64-bit process: i386
numbers) or of the x32 ABI is refused (EPERM), since its numbers are not the ones the
rules name; then one block per syscall of the plan: ``nr == N`` -> its branches in order
-> its default; anything else is allowed.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from moray.errors import KernelError
from moray.micro.rules import Action, Check, Op, Plan

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# classic BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06

OFF_NR, OFF_ARCH = 0, 4


def arg_lo(i: int) -> int:
    return 16 + 8 * i


def arg_hi(i: int) -> int:
    return 20 + 8 * i


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int

    def pack(self) -> bytes:
        return struct.pack("=HBBI", self.code, self.jt, self.jf, self.k)


# an instruction whose jump targets are labels (str) or relative offsets (int)
_Pending = tuple[int, int | str, int | str, int]


class _Asm:
    def __init__(self) -> None:
        self.code: list[_Pending] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def fresh(self) -> str:
        self._n += 1
        return f"L{self._n}"

    def ld(self, off: int) -> None:
        self.code.append((LD_W_ABS, 0, 0, off))

    def jmp(self, code: int, k: int, jt: int | str, jf: int | str) -> None:
        self.code.append((code, jt, jf, k))

    def ret(self, action: int) -> None:
        self.code.append((RET_K, 0, 0, action))

    def finish(self) -> list[Insn]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.code):
            def rel(t: int | str, pc: int = pc) -> int:
                if isinstance(t, int):
                    return t
                off = self.labels[t] - pc - 1
                if not 0 <= off <= 255:
                    raise ValueError(f"jump of {off} does not fit a classic BPF offset")
                return off
            out.append(Insn(code, rel(jt), rel(jf), k))
        return out


def _check(a: _Asm, c: Check, fail: str) -> None:
    if c.op is Op.EQ32:
        a.ld(arg_lo(c.arg))
        a.jmp(JEQ_K, c.value, 0, fail)
    elif c.op is Op.NOT_EQ32:
        a.ld(arg_lo(c.arg))
        a.jmp(JEQ_K, c.value, fail, 0)
    elif c.op is Op.SET:
        a.ld(arg_lo(c.arg))
        a.jmp(JSET_K, c.value, 0, fail)
    elif c.op is Op.NONZERO:
        ok = a.fresh()
        a.ld(arg_lo(c.arg))
        a.jmp(JEQ_K, 0, 0, ok)
        a.ld(arg_hi(c.arg))
        a.jmp(JEQ_K, 0, fail, 0)
        a.label(ok)
    else:  # pragma: no cover - closed enum
        raise ValueError(c.op)


def assemble(p: Plan) -> list[Insn]:
    """The seccomp program of a plan (pure)."""
    a = _Asm()
    a.ld(OFF_ARCH)
    a.jmp(JEQ_K, AUDIT_ARCH_X86_64, 1, 0)
    a.ret(Action.ERRNO_EPERM)
    a.ld(OFF_NR)
    a.jmp(JGE_K, X32_SYSCALL_BIT, 0, 1)
    a.ret(Action.ERRNO_EPERM)
    for r in p.rules:
        nxt = a.fresh()
        a.ld(OFF_NR)  # branches below reload the accumulator with arguments
        a.jmp(JEQ_K, r.nr, 0, nxt)
        for b in r.branches:
            fail = a.fresh()
            for c in b.checks:
                _check(a, c, fail)
            a.ret(b.action)
            a.label(fail)
        a.ret(r.default)
        a.label(nxt)
    a.ret(Action.ALLOW)
    return a.finish()


def run(prog: Sequence[Insn], nr: int, args: Sequence[int] = (),
        arch: int = AUDIT_ARCH_X86_64) -> int:
    """Evaluate *prog* on one call as the kernel would (the instructions ``assemble``
    emits only): for tests and ``moray micro --explain``."""
    a6 = [*args, 0, 0, 0, 0, 0, 0][:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *[x & (2**64 - 1) for x in a6])
    pc = acc = 0
    while True:
        i = prog[pc]
        if i.code == LD_W_ABS:
            acc = struct.unpack_from("=I", data, i.k)[0]
            pc += 1
        elif i.code == RET_K:
            return i.k
        else:
            hit = {JEQ_K: acc == i.k, JGE_K: acc >= i.k, JSET_K: bool(acc & i.k)}[i.code]
            pc += 1 + (i.jt if hit else i.jf)


# --------------------------------------------------------------------------- install

SYS_SECCOMP = 317
SYS_PIDFD_GETFD = 438
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(prog: Sequence[Insn], listener: bool = True) -> int:
    """Set no_new_privs and install *prog* on the calling thread; returns the listener
    (notification) fd, close-on-exec (0 with listener=False: a plain filter)."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    raw = b"".join(i.pack() for i in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    fd = _libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER,
                       SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0,
                       ctypes.byref(fprog))
    if fd < 0:
        err = ctypes.get_errno()
        raise KernelError(f"seccomp(SET_MODE_FILTER, NEW_LISTENER): {os.strerror(err)}")
    return int(fd)


SYS_CLONE = 56
CLONE_FILES = 0x400
SIGCHLD = 17


def clone_files() -> int:
    """fork(2), but the child shares the caller's fd table (clone CLONE_FILES): 0 in
    the child, its pid in the parent. The caller must be single-threaded."""
    pid = _libc.syscall(SYS_CLONE, CLONE_FILES | SIGCHLD, 0, 0, 0, 0)
    if pid < 0:
        err = ctypes.get_errno()
        raise KernelError(f"clone(CLONE_FILES): {os.strerror(err)}")
    return int(pid)


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy of another process's fd (pidfd_getfd(2), Linux 5.6+)."""
    got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
    return int(got)
