"""Runtime policies -> what the MicroEnforcer's seccomp filter does, and the supervisor's
decisions on notified calls. Pure: no /proc, no kernel.

``plan(policies, supervisor_pid)`` is the whole translation of a set of policies (loaded
by the agent's own parser, moray.api.policy.load) into a :class:`Plan`: which syscalls the
filter refuses outright (EPERM, syscall rules of enforcing policies), which it hands to
the supervisor (exec, open, connect, ...), on which argument values, and which rule kinds
of the policies cannot be enforced here (reported by name at start, never dropped
silently). ``decide_exec`` / ``decide_open`` / ``decide_connect`` judge one notified call
from the values the supervisor read (moray.micro.notify) and resolved
(moray.micro.resolve). Golden-tested in tests/unit/micro/test_rules.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from moray.api.policy.model import CLONE_FLAGS, NAMESPACES, FileRule, Mode, Policy
from moray.api.policy.syscalls import X86_64


class Action(IntEnum):
    """What the filter returns for a call (the SECCOMP_RET_* values)."""

    KILL_PROCESS = 0x80000000
    ERRNO_EPERM = 0x00050000 | 1
    ERRNO_ENOSYS = 0x00050000 | 38
    NOTIFY = 0x7FC00000
    ALLOW = 0x7FFF0000


class Op(IntEnum):
    EQ32 = 1      # low 32 bits of the argument == value (int arguments: pids, fds, signals)
    SET = 2       # low 32 bits & value != 0 (flag bits)
    NONZERO = 3   # the 64-bit argument is not 0 (a pointer given)
    NOT_EQ32 = 4  # low 32 bits != value


@dataclass(frozen=True, slots=True)
class Check:
    arg: int
    op: Op
    value: int = 0


@dataclass(frozen=True, slots=True)
class Branch:
    """All checks hold -> action."""

    checks: tuple[Check, ...]
    action: Action


@dataclass(frozen=True, slots=True)
class SyscallRule:
    nr: int
    name: str
    branches: tuple[Branch, ...] = ()
    default: Action = Action.ALLOW
    why: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    rules: tuple[SyscallRule, ...]
    unsupported: tuple[str, ...]      # rule kinds present and not enforced here, by name
    notes: tuple[str, ...] = ()       # what the plan adds on its own (io_uring, ...)
    policies: tuple[Policy, ...] = field(default=(), compare=False)

    def rule(self, name: str) -> SyscallRule | None:
        nr = X86_64[name]
        return next((r for r in self.rules if r.nr == nr), None)

    def notified(self) -> set[str]:
        return {r.name for r in self.rules
                if r.default is Action.NOTIFY
                or any(b.action is Action.NOTIFY for b in r.branches)}


SIGKILL, SIGSTOP = 9, 19
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
PROT_EXEC = 4
MINUS_ONE = 0xFFFFFFFF

EXEC_CALLS = ("execve", "execveat")
OPEN_CALLS = ("open", "creat", "openat", "openat2")
NET_CALLS = ("connect", "sendto", "sendmsg", "sendmmsg")


def plan(policies: Sequence[Policy], supervisor_pid: int) -> Plan:
    """The filter and the notified calls for *policies* on a workload whose supervisor is
    *supervisor_pid* (calls that could stop or trace the supervisor are always notified)."""
    rules: dict[str, SyscallRule] = {}
    unsupported: list[str] = []
    notes: list[str] = []
    exec_used = any(p.exec.used for p in policies)
    files_used = any(p.files.used for p in policies)
    net_used = any(p.network.used for p in policies)
    for p in policies:
        if p.images.used:
            unsupported.append(f"{p.name}: spec.images")
        if p.agent_down.value != "open":
            unsupported.append(f"{p.name}: spec.agentDown")
    if policies:
        notes.append("spec.scope is not used: every policy of the file applies to the "
                     "wrapped workload")
    if exec_used:
        for name in EXEC_CALLS:
            rules[name] = SyscallRule(X86_64[name], name, default=Action.NOTIFY,
                                      why="exec rules")
    if files_used:
        for name in OPEN_CALLS:
            rules[name] = SyscallRule(X86_64[name], name, default=Action.NOTIFY,
                                      why="file rules")
    if net_used:
        rules["connect"] = SyscallRule(X86_64["connect"], "connect", default=Action.NOTIFY,
                                       why="egress rules")
        # a datagram's destination: only when the call names one (arg 4 not NULL)
        rules["sendto"] = SyscallRule(X86_64["sendto"], "sendto", branches=(
            Branch((Check(4, Op.NONZERO),), Action.NOTIFY),), why="egress rules")
        rules["sendmsg"] = SyscallRule(X86_64["sendmsg"], "sendmsg", default=Action.NOTIFY,
                                       why="egress rules")
        rules["sendmmsg"] = SyscallRule(X86_64["sendmmsg"], "sendmmsg",
                                        default=Action.NOTIFY, why="egress rules")
    if exec_used or files_used or net_used:
        # io_uring's operations (openat, connect, ...) are not syscalls: seccomp never sees
        # them, so a ring would bypass every rule above
        rules["io_uring_setup"] = SyscallRule(X86_64["io_uring_setup"], "io_uring_setup",
                                              default=Action.ERRNO_EPERM,
                                              why="io_uring bypasses seccomp")
        notes.append("io_uring_setup refused (EPERM): io_uring operations bypass seccomp")
    if any(p.exec.drift for p in policies):
        # code mapped executable from a file (the dynamic loader, dlopen) is drift too
        rules["mmap"] = SyscallRule(X86_64["mmap"], "mmap", branches=(
            Branch((Check(2, Op.SET, PROT_EXEC), Check(4, Op.NOT_EQ32, MINUS_ONE)),
                   Action.NOTIFY),), why="drift of mapped code")
    # syscall rules: enforcing policies' refused by the filter, monitor-only ones notified
    enforce = {s for p in policies if p.mode is Mode.ENFORCE for s in p.syscalls.deny}
    monitor = {s for p in policies if p.mode is Mode.MONITOR for s in p.syscalls.deny}
    for name in sorted(enforce | monitor):
        act = Action.ERRNO_EPERM if name in enforce else Action.NOTIFY
        prev = rules.get(name)
        if prev is not None and act is Action.NOTIFY:
            continue  # already notified for another rule kind: the supervisor reports it
        rules[name] = SyscallRule(X86_64[name], name, default=act, why="syscalls.deny")
    _namespaces(rules, policies, notes)
    _setid(rules, policies)
    _guard_supervisor(rules, supervisor_pid)
    return Plan(tuple(sorted(rules.values(), key=lambda r: r.nr)), tuple(unsupported),
                tuple(notes), tuple(policies))


def _add(rules: dict[str, SyscallRule], name: str, branches: tuple[Branch, ...] = (),
         default: Action = Action.ALLOW, why: str = "") -> None:
    """Notify *name* on *branches* (or always: *default*), unless a rule already refuses
    or notifies every call of it."""
    prev = rules.get(name)
    if prev is not None and prev.default is not Action.ALLOW:
        return
    old = prev.branches if prev is not None else ()
    rules[name] = SyscallRule(X86_64[name], name, old + branches, default,
                              why=prev.why if prev is not None else why)


def ns_mask(policies: Sequence[Policy]) -> int:
    mask = 0
    for p in policies:
        for n in p.namespaces.deny:
            mask |= CLONE_FLAGS[n]
    return mask


def _namespaces(rules: dict[str, SyscallRule], policies: Sequence[Policy],
                notes: list[str]) -> None:
    """Creating a denied namespace type (clone, unshare: the flags are in a register,
    checked in the filter) or entering one (setns: always notified)."""
    mask = ns_mask(policies)
    if not mask:
        return
    for name in ("clone", "unshare"):
        _add(rules, name, (Branch((Check(0, Op.SET, mask),), Action.NOTIFY),),
             why="namespaces")
    _add(rules, "setns", default=Action.NOTIFY, why="namespaces")
    # clone3's flags are in memory the filter cannot read: ENOSYS, so that libc falls
    # back to clone (as container runtimes' default profiles do)
    _add(rules, "clone3", default=Action.ERRNO_ENOSYS, why="namespaces")
    notes.append("clone3 answered ENOSYS (its flags are in memory): libc falls back to clone")


SETID_MODE = {"setuid": 0o4000, "setgid": 0o2000}
O_CREAT = 0o100
# syscall -> (index of the mode argument, index of the flags argument needing O_CREAT)
MODE_ARGS = {"chmod": (1, None), "fchmod": (1, None), "fchmodat": (2, None),
             "fchmodat2": (2, None), "open": (2, 1), "openat": (3, 2), "creat": (1, None),
             "mknod": (1, None), "mknodat": (2, None)}
XATTR_CALLS = {"setxattr": 1, "lsetxattr": 1, "fsetxattr": 1, "setxattrat": 3}


def _setid(rules: dict[str, SyscallRule], policies: Sequence[Policy]) -> None:
    """A setuid/setgid bit set by any call that takes a mode (chmod family, creation
    with a mode): in a register, checked in the filter; file capabilities: the xattr
    calls, notified (the name is in memory)."""
    kinds = {k for p in policies for k in p.setid.deny}
    bits = sum(SETID_MODE[k] for k in SETID_MODE if k in kinds)
    if bits:
        for name, (mode_i, flags_i) in MODE_ARGS.items():
            checks = (Check(mode_i, Op.SET, bits),) + (
                (Check(flags_i, Op.SET, O_CREAT),) if flags_i is not None else ())
            _add(rules, name, (Branch(checks, Action.NOTIFY),), why="setid")
        _add(rules, "openat2", default=Action.NOTIFY, why="setid")
    if "caps" in kinds:
        for name in XATTR_CALLS:
            _add(rules, name, default=Action.NOTIFY, why="setid")


def _guard_supervisor(rules: dict[str, SyscallRule], sup: int) -> None:
    """Calls that could stop, kill or trace the supervisor are notified (and refused with
    an event); any other use passes in the filter. A syscall rule refusing the call
    wholesale stays as it is."""
    def add(name: str, branches: tuple[Branch, ...]) -> None:
        prev = rules.get(name)
        if prev is not None and prev.default is not Action.ALLOW:
            return
        old = prev.branches if prev is not None else ()
        rules[name] = SyscallRule(X86_64[name], name, branches + old,
                                  why="supervisor guard")

    to_sup = (Branch((Check(0, Op.EQ32, sup),), Action.NOTIFY),
              Branch((Check(0, Op.EQ32, MINUS_ONE),), Action.NOTIFY))
    add("kill", to_sup)
    add("tkill", (Branch((Check(0, Op.EQ32, sup),), Action.NOTIFY),))
    add("tgkill", (Branch((Check(0, Op.EQ32, sup),), Action.NOTIFY),))
    add("pidfd_open", (Branch((Check(0, Op.EQ32, sup),), Action.NOTIFY),))
    add("ptrace", (Branch((Check(1, Op.EQ32, sup),), Action.NOTIFY),))
    add("process_vm_writev", (Branch((Check(0, Op.EQ32, sup),), Action.NOTIFY),))
    add("process_vm_readv", (Branch((Check(0, Op.EQ32, sup),), Action.NOTIFY),))
    prev = rules.get("pidfd_send_signal")
    if prev is None or prev.default is Action.ALLOW:
        rules["pidfd_send_signal"] = SyscallRule(X86_64["pidfd_send_signal"],
                                                 "pidfd_send_signal", default=Action.NOTIFY,
                                                 why="supervisor guard")


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Match:
    policy: str
    mode: str
    rule: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The supervisor's answer: ``deny`` when an enforcing policy matched."""

    kind: str                        # exec | drift | file | network | syscall | supervisor
    matches: tuple[Match, ...] = ()

    @property
    def deny(self) -> bool:
        return any(m.mode == Mode.ENFORCE.value for m in self.matches)

    @property
    def action(self) -> str | None:
        if not self.matches:
            return None
        return "blocked" if self.deny else "would-block"


ALLOWED = Verdict("none")


def _longest(pats: Sequence[object], names: Sequence[str]) -> object | None:
    best = None
    for pat in pats:
        for n in names:
            if n and pat.matches(n) and (best is None  # type: ignore[attr-defined]
                                         or len(pat.path) > len(best.path)):  # type: ignore
                best = pat
    return best


def decide_exec(policies: Sequence[Policy], binary: str, filename: str,
                drifted: bool) -> Verdict:
    """*binary*: the file the kernel will run (symlinks followed); *filename*: the name
    given, absolute, its last symlink not followed; *drifted*: written after start."""
    matches: list[Match] = []
    kind = "exec"
    for p in policies:
        e = p.exec
        best = _longest(e.deny, (binary, filename))
        if best is not None:
            matches.append(Match(p.name, p.mode.value, f"exec.deny: {best.text}"))  # type: ignore[attr-defined]
        elif e.allow is not None and _longest(e.allow, (binary, filename)) is None:
            matches.append(Match(p.name, p.mode.value, "exec.allow: not listed"))
        elif e.drift and drifted:
            matches.append(Match(p.name, p.mode.value, "exec.drift: block"))
            kind = "drift"
    return Verdict(kind, tuple(matches)) if matches else ALLOWED


def decide_mapped(policies: Sequence[Policy], path: str, drifted: bool) -> Verdict:
    """Code mapped executable (mmap PROT_EXEC of a file): drift rules only."""
    if not drifted:
        return ALLOWED
    m = tuple(Match(p.name, p.mode.value, "exec.drift: block") for p in policies
              if p.exec.drift)
    return Verdict("drift", m) if m else ALLOWED


def access_of(flags: int) -> int:
    """Open flags -> 1 read, 2 write, 3 both, 0 (O_PATH: neither)."""
    if flags & 0o10000000:
        return 0
    acc = {0: 1, 1: 2, 2: 3}.get(flags & 3, 3)
    if flags & (0o100 | 0o1000):  # O_CREAT, O_TRUNC
        acc |= 2
    return acc


def decide_open(policies: Sequence[Policy], names: Sequence[str], acc: int) -> Verdict:
    """*names*: the resolved path of the file (and the covered path it was matched by
    identity, if any); *acc*: access_of(flags)."""
    matches: list[Match] = []
    cands = [n for n in names if n]
    cands += [n.rstrip("/") + "/" for n in cands]  # a covered directory itself
    for p in policies:
        for label, rules in (("files.deny", p.files.deny), ("files.monitor", p.files.monitor)):
            r = FileRule.strongest(rules, cands, acc)
            if r is not None:
                mode = p.mode.value if label == "files.deny" else Mode.MONITOR.value
                matches.append(Match(p.name, mode, f"{label}: {r.pattern.text} ({r.access})"))
                break
    return Verdict("file", tuple(matches)) if matches else ALLOWED


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def effective_address(addr: IPAddress) -> IPAddress:
    """The address a connect really reaches: IPv4-mapped/compatible IPv6 as IPv4, the
    unspecified address as loopback (docs/policy.md, "network")."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif int(addr) >> 32 == 0 and int(addr) > 1:
            addr = ipaddress.IPv4Address(int(addr))
    if addr.is_unspecified:
        return ipaddress.IPv4Address("127.0.0.1") if addr.version == 4 else \
            ipaddress.IPv6Address("::1")
    return addr


def decide_connect(policies: Sequence[Policy], addr: IPAddress, port: int,
                   proto: int) -> Verdict:
    """*proto*: 6 tcp, 17 udp, 0 unknown (then a rule of either protocol matches)."""
    addr = effective_address(addr)
    protos = (6, 17) if proto == 0 else (proto,)
    matches: list[Match] = []
    for p in policies:
        n = p.network
        hit = next((r for r in n.deny if any(r.matches(addr, port, q) for q in protos)), None)
        if hit is not None:
            matches.append(Match(p.name, p.mode.value, f"network.egress.deny: {hit.text}"))
        elif n.allow is not None and not any(
                r.matches(addr, port, q) for r in n.allow for q in protos):
            matches.append(Match(p.name, p.mode.value, "network.egress.allow: not listed"))
    return Verdict("network", tuple(matches)) if matches else ALLOWED


def decide_syscall(policies: Sequence[Policy], name: str) -> Verdict:
    m = tuple(Match(p.name, p.mode.value, f"syscalls.deny: {name}") for p in policies
              if name in p.syscalls.deny)
    return Verdict("syscall", m) if m else ALLOWED


def ns_names(flags: int) -> list[str]:
    return [n for n in NAMESPACES if flags & CLONE_FLAGS[n]]


def decide_namespaces(policies: Sequence[Policy], names: Sequence[str]) -> Verdict:
    m = []
    for p in policies:
        hit = [n for n in names if n in p.namespaces.deny]
        if hit:
            m.append(Match(p.name, p.mode.value, f"namespaces.deny: {', '.join(hit)}"))
    return Verdict("namespaces", tuple(m)) if m else ALLOWED


def setid_kinds(mode: int) -> list[str]:
    return [k for k, bit in SETID_MODE.items() if mode & bit]


def decide_setid(policies: Sequence[Policy], kinds: Sequence[str]) -> Verdict:
    m = []
    for p in policies:
        hit = [k for k in kinds if k in p.setid.deny]
        if hit:
            m.append(Match(p.name, p.mode.value, f"setid.deny: {', '.join(hit)}"))
    return Verdict("setid", tuple(m)) if m else ALLOWED
