"""Policies in slots -> typed rows of the policy maps (bpf/maps/policy.h). Pure.

``compile_policies([(slot, policy), ...])`` is a function of all active policies together:
LPM tries return only the longest matching key, so every row carries the masks of all the
shorter prefixes that cover it (``/etc/shadow`` exact also gets the bits of a ``/etc/*``
rule of another policy). apply.py writes what this returns; tests compare it with golden
files. Limits that the kernel imposes are CompileErrors here, never silent truncation.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from moray.agent.bpf import abi
from moray.api.policy.model import (
    NAMESPACES,
    PROTO_NUMBER,
    SETID_KINDS,
    Access,
    AgentDown,
    Mode,
    Policy,
)
from moray.api.policy.syscalls import X86_64
from moray.errors import ConfigError


class CompileError(ConfigError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ConfRow:
    active: int = 0
    enforce: int = 0
    host: int = 0
    exec: int = 0
    drift: int = 0
    exec_allow: int = 0
    files: int = 0
    net: int = 0
    net_allow: int = 0
    syscalls: int = 0
    flags: int = 0
    # --- issue 13, agent down: slots with agentDown: closed; the longest agentDownHold (ns)
    down_closed: int = 0
    down_hold_ns: int = 0
    # issue 13: namespace and setid rules (bpf/progs/enforce_args.bpf.c)
    args: int = 0                             # slots with either
    ns: tuple[int, ...] = (0,) * abi.NS_MAX   # per namespace type (model.NAMESPACES order)
    setid: tuple[int, ...] = (0,) * abi.SETID_MAX  # per model.SETID_KINDS (+ unused)


ARG_FIELDS = ("args", "ns", "setid")  # not plain masks: built and rendered apart


@dataclass(frozen=True, slots=True, order=True)
class PathKey:
    raw: bytes    # the path or prefix, UTF-8
    exact: bool   # exact keys include the NUL in the LPM prefix

    @property
    def prefixlen(self) -> int:
        return (len(self.raw) + int(self.exact)) * 8

    def parents(self) -> Iterator_[PathKey]:
        """Keys that would cover this one in the trie (shorter prefixes, and for an exact
        key the prefix of the same bytes)."""
        end = len(self.raw) + 1 if self.exact else len(self.raw)
        for i in range(1, end):
            yield PathKey(self.raw[:i], False)

    def __str__(self) -> str:
        s = self.raw.decode(errors="backslashreplace")
        return s if self.exact else s + "*"


@dataclass(frozen=True, slots=True)
class ExecVal:
    deny: int = 0
    allow: int = 0

    def __or__(self, o: ExecVal) -> ExecVal:
        return ExecVal(self.deny | o.deny, self.allow | o.allow)

    def masked(self, m: int) -> ExecVal:
        return ExecVal(self.deny & m, self.allow & m)


@dataclass(frozen=True, slots=True)
class FileVal:
    deny_read: int = 0
    deny_write: int = 0
    mon_read: int = 0
    mon_write: int = 0

    def __or__(self, o: FileVal) -> FileVal:
        return FileVal(self.deny_read | o.deny_read, self.deny_write | o.deny_write,
                       self.mon_read | o.mon_read, self.mon_write | o.mon_write)

    def masked(self, m: int) -> FileVal:
        return FileVal(self.deny_read & m, self.deny_write & m, self.mon_read & m,
                       self.mon_write & m)


@dataclass(frozen=True, slots=True, order=True)
class NetKey:
    family: int    # 4 or 6
    bits: int      # CIDR prefix length
    addr: bytes    # 16 bytes, network order, host bits zero

    @property
    def prefixlen(self) -> int:
        return 32 + self.bits

    def parents(self) -> Iterator_[NetKey]:
        width = 32 if self.family == 4 else 128
        n = int.from_bytes(self.addr[: width // 8], "big")
        for b in range(self.bits):
            masked = (n >> (width - b) << (width - b)) if b else 0
            yield NetKey(self.family, b, masked.to_bytes(width // 8, "big").ljust(16, b"\0"))

    def __str__(self) -> str:
        raw = self.addr[:4] if self.family == 4 else self.addr
        return f"{ipaddress.ip_address(raw)}/{self.bits}"


@dataclass(frozen=True, slots=True, order=True)
class NetEntry:
    port_lo: int
    port_hi: int
    proto: int
    deny: int = 0
    allow: int = 0

    def masked(self, m: int) -> NetEntry:
        return NetEntry(self.port_lo, self.port_hi, self.proto, self.deny & m, self.allow & m)


NetVal = tuple[NetEntry, ...]


def merge_net(*vals: NetVal) -> NetVal:
    """Entries with the same (ports, protocol) OR their masks; empty masks drop out."""
    acc: dict[tuple[int, int, int], tuple[int, int]] = {}
    for val in vals:
        for e in val:
            k = (e.port_lo, e.port_hi, e.proto)
            d, a = acc.get(k, (0, 0))
            acc[k] = (d | e.deny, a | e.allow)
    return tuple(sorted(NetEntry(lo, hi, p, d, a) for (lo, hi, p), (d, a) in acc.items()
                        if d or a))


@dataclass
class Compiled:
    conf: ConfRow
    exec: dict[PathKey, ExecVal] = field(default_factory=dict)
    files: dict[PathKey, FileVal] = field(default_factory=dict)
    net: dict[NetKey, NetVal] = field(default_factory=dict)
    syscalls: dict[int, int] = field(default_factory=dict)
    slots: dict[int, Policy] = field(default_factory=dict)

    def rows(self) -> int:
        return len(self.exec) + len(self.files) + len(self.net) + len(self.syscalls)

    def to_json(self) -> dict[str, Any]:
        """Stable rendering for golden tests and `policy list --rows`."""
        c = self.conf
        conf = {k: f"{getattr(c, k):#x}" for k in ConfRow.__slots__ if k not in ARG_FIELDS}
        if c.args:  # only when used: golden files of policies without them stay as they are
            conf["args"] = f"{c.args:#x}"
            conf.update({f"ns.{n}": f"{v:#x}" for n, v in zip(NAMESPACES, c.ns, strict=True)
                         if v})
            conf.update({f"setid.{n}": f"{v:#x}" for n, v in zip(SETID_KINDS, c.setid[:3],
                                                                    strict=True) if v})
        return {
            "conf": conf,
            "slots": {str(s): p.name for s, p in sorted(self.slots.items())},
            "exec": {str(k): [f"{v.deny:#x}", f"{v.allow:#x}"]
                     for k, v in sorted(self.exec.items())},
            "files": {str(k): [f"{v.deny_read:#x}", f"{v.deny_write:#x}", f"{v.mon_read:#x}",
                               f"{v.mon_write:#x}"] for k, v in sorted(self.files.items())},
            "net": {str(k): [[e.port_lo, e.port_hi, e.proto, f"{e.deny:#x}", f"{e.allow:#x}"]
                             for e in v] for k, v in sorted(self.net.items())},
            "syscalls": {str(k): f"{v:#x}" for k, v in sorted(self.syscalls.items())},
        }


K = TypeVar("K", PathKey, NetKey)
V = TypeVar("V")


def lpm_cover(rows: Mapping[Any, V], key: PathKey | NetKey) -> V | None:
    """The row the kernel would return for *key*'s own bytes: *key*, else its longest
    stored parent."""
    if key in rows:
        return rows[key]
    best: V | None = None
    for parent in key.parents():  # shortest first: keep the last hit
        hit = rows.get(parent)
        if hit is not None:
            best = hit
    return best


def merge_lpm(rows: dict[K, V], combine: Callable[[V, V], V]) -> dict[K, V]:
    """Fold every stored shorter covering prefix into each row."""
    out: dict[K, V] = {}
    for key, val in rows.items():
        acc = val
        for parent in key.parents():
            hit = rows.get(parent)
            if hit is not None:
                acc = combine(acc, hit)
        out[key] = acc
    return out


def path_key(text_path: str, exact: bool) -> PathKey:
    return PathKey(text_path.encode(), exact)


def net_key(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> NetKey:
    fam = 4 if network.version == 4 else 6
    return NetKey(fam, network.prefixlen, network.network_address.packed.ljust(16, b"\0"))


def compile_policies(slotted: Sequence[tuple[int, Policy]]) -> Compiled:  # noqa: PLR0915
    """All active policies (slot, policy) -> map rows. Raises CompileError."""
    conf: dict[str, int] = {k: 0 for k in ConfRow.__slots__ if k not in ARG_FIELDS}
    args, ns, setid = 0, [0] * abi.NS_MAX, [0] * abi.SETID_MAX
    exec_rows: dict[PathKey, ExecVal] = {}
    file_rows: dict[PathKey, FileVal] = {}
    net_rows: dict[NetKey, list[NetEntry]] = {}
    sys_rows: dict[int, int] = {}
    slots: dict[int, Policy] = {}
    for slot, p in slotted:
        if not 0 <= slot < abi.POL_MAX:
            raise CompileError(f"{p.name}: slot {slot} outside 0..{abi.POL_MAX - 1}")
        if slot in slots:
            raise CompileError(f"slot {slot} given to {slots[slot].name} and {p.name}")
        slots[slot] = p
        bit = 1 << slot
        conf["active"] |= bit
        if p.mode is Mode.ENFORCE:
            conf["enforce"] |= bit
        if p.scope.host:
            conf["host"] |= bit
        if p.scope.containers is not None:
            conf["flags"] |= abi.PC_HOLD
        if p.agent_down is AgentDown.CLOSED:
            conf["down_closed"] |= bit
            conf["down_hold_ns"] = max(conf["down_hold_ns"], p.agent_down_hold * 1_000_000_000)
        if p.exec.used:
            conf["exec"] |= bit
        if p.exec.drift:
            conf["drift"] |= bit
        if p.exec.allow is not None:
            conf["exec_allow"] |= bit
        for pat in p.exec.deny:
            k = path_key(pat.path, pat.exact)
            exec_rows[k] = exec_rows.get(k, ExecVal()) | ExecVal(deny=bit)
        for pat in p.exec.allow or ():
            k = path_key(pat.path, pat.exact)
            exec_rows[k] = exec_rows.get(k, ExecVal()) | ExecVal(allow=bit)
        if p.files.used:
            conf["files"] |= bit
        for rules, monitor in ((p.files.deny, False), (p.files.monitor, True)):
            for r in rules:
                rd = bit if r.access in (Access.READ, Access.ANY) else 0
                wr = bit if r.access in (Access.WRITE, Access.ANY) else 0
                v = FileVal(mon_read=rd, mon_write=wr) if monitor else FileVal(rd, wr)
                k = path_key(r.pattern.path, r.pattern.exact)
                file_rows[k] = file_rows.get(k, FileVal()) | v
        if p.network.used:
            conf["net"] |= bit
        if p.network.allow is not None:
            conf["net_allow"] |= bit
        for nrules, allow in ((p.network.deny, False), (p.network.allow or (), True)):
            for nr in nrules:
                e = NetEntry(nr.port_lo, nr.port_hi, PROTO_NUMBER[nr.protocol],
                             0 if allow else bit, bit if allow else 0)
                net_rows.setdefault(net_key(nr.network), []).append(e)
        if p.syscalls.used:
            conf["syscalls"] |= bit
        for name in p.syscalls.deny:
            num = X86_64[name]
            if num >= abi.SYS_MAX:
                raise CompileError(f"{p.name}: syscall {name} ({num}) >= {abi.SYS_MAX}")
            sys_rows[num] = sys_rows.get(num, 0) | bit
        for ns_name in p.namespaces.deny:
            ns[NAMESPACES.index(ns_name)] |= bit
        for setid_name in p.setid.deny:
            setid[SETID_KINDS.index(setid_name)] |= bit
        if p.namespaces.used or p.setid.used:
            args |= bit

    net_merged = merge_lpm({k: merge_net(tuple(v)) for k, v in net_rows.items()}, merge_net)
    for nkey, nval in net_merged.items():
        if len(nval) > abi.NET_RULES:
            raise CompileError(f"{len(nval)} port/protocol rules apply to {nkey} (with the "
                               f"prefixes covering it); the kernel holds {abi.NET_RULES}")
    row = ConfRow(**conf, args=args, ns=tuple(ns), setid=tuple(setid))
    return Compiled(row, merge_lpm(exec_rows, _or), merge_lpm(file_rows, _or),
                    net_merged, sys_rows, slots)


def _or(a: Any, b: Any) -> Any:
    return a | b


# typing alias kept local: parents() generators
Iterator_ = Iterable


__all__ = [
    "CompileError",
    "Compiled",
    "ConfRow",
    "ExecVal",
    "FileVal",
    "NetEntry",
    "NetKey",
    "PathKey",
    "compile_policies",
    "lpm_cover",
    "merge_lpm",
    "merge_net",
]
