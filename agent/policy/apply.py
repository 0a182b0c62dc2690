"""Compiled rows -> the kernel's policy maps, published by one final write.

:meth:`Applier.publish` changes the maps in four steps so that no lookup ever lands in a
state without a rule (STYLE "do this" 4):

1. stage: every row the new policy set needs is written, *merged* with what the live
   configuration still uses (old rows keep their live slots' bits; new rows also get the
   bits of the live rows that covered them in the LPM tries). Nothing changes for the
   kernel yet: new slots are not active.
2. publish: the new mr_pconf goes into the idle entry, then mr_pgen flips to it: one
   4-byte write after which every program sees the new slots and modes.
3. grace: programs that read the old configuration just before the flip finish (they run
   for microseconds under RCU; we wait `grace` seconds).
4. clean: rows are rewritten to exactly the new values; rows no policy needs are deleted.

A replaced policy gets a new slot (engine.py), so old and new versions are both complete
in the maps around the flip. Writes go through the :class:`MapLike` protocol: tests use
dict-backed fakes; the agent passes agent.bpf.loader.BpfMap objects.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from moray.agent.bpf import abi
from moray.agent.policy.compile import (
    Compiled,
    ConfRow,
    ExecVal,
    FileVal,
    NetEntry,
    NetKey,
    NetVal,
    PathKey,
    lpm_cover,
    merge_net,
)
from moray.agent.policy.programs import kinds_needed

log = logging.getLogger(__name__)

MAP_NAMES = ("mr_pgen", "mr_pconf", "mr_pscope", "mr_ppend", "mr_phold", "mr_palive",
             "mr_pexec", "mr_pfile", "mr_pnet", "mr_psys")


class MapLike(Protocol):
    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...
    def lookup(self, key: bytes) -> bytes | None: ...
    def delete(self, key: bytes) -> bool: ...
    def keys(self) -> Iterator[bytes]: ...


# --------------------------------------------------------------------------- encoding

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PKEY = abi.PPATH_KEY.compile()
_EXEC = abi.PEXEC_VAL.compile()
_FILE = abi.PFILE_VAL.compile()
_NKEY = abi.PNET_KEY.compile()
_NRULE = abi.PNET_RULE.compile()
_CONF = abi.PCONF.compile()
_UNUSED_RULE = _NRULE.pack(0, 0, 1, 0, 0)  # lo > hi: end of the list


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def enc_path_key(k: PathKey) -> bytes:
    return _PKEY.pack(k.prefixlen, k.raw)


def dec_path_key(b: bytes) -> PathKey:
    plen, path = _PKEY.unpack(b)
    n = plen // 8
    if n and path[n - 1] == 0:
        return PathKey(path[: n - 1], True)
    return PathKey(path[:n], False)


def enc_exec(v: ExecVal) -> bytes:
    return _EXEC.pack(v.deny, v.allow)


def dec_exec(b: bytes) -> ExecVal:
    return ExecVal(*_EXEC.unpack(b))


def enc_file(v: FileVal) -> bytes:
    return _FILE.pack(v.deny_read, v.deny_write, v.mon_read, v.mon_write)


def dec_file(b: bytes) -> FileVal:
    return FileVal(*_FILE.unpack(b))


def enc_net_key(k: NetKey) -> bytes:
    return _NKEY.pack(k.prefixlen, k.family, k.addr)


def dec_net_key(b: bytes) -> NetKey:
    plen, fam, addr = _NKEY.unpack(b)
    return NetKey(fam, plen - 32, addr)


def enc_net(v: NetVal) -> bytes:
    if len(v) > abi.NET_RULES:
        raise ValueError(f"{len(v)} net rules in one row, the kernel holds {abi.NET_RULES}")
    out = [_NRULE.pack(e.deny, e.allow, e.port_lo, e.port_hi, e.proto) for e in v]
    out += [_UNUSED_RULE] * (abi.NET_RULES - len(v))
    return b"".join(out)


def dec_net(b: bytes) -> NetVal:
    out = []
    for i in range(abi.NET_RULES):
        deny, allow, lo, hi, proto = _NRULE.unpack_from(b, i * _NRULE.size)
        if lo > hi:
            break
        out.append(NetEntry(lo, hi, proto, deny, allow))
    return tuple(out)


_NS = struct.Struct(f"<{abi.NS_MAX}Q")
_SETID = struct.Struct(f"<{abi.SETID_MAX}Q")


def enc_conf(c: ConfRow, gen: int) -> bytes:
    """By field name: ConfRow's fields are mr_pconf's, plus `gen` (the counter); the
    namespace and setid arrays are packed as their bytes."""
    vals: dict[str, object] = {k: getattr(c, k) for k in ConfRow.__slots__}
    vals["gen"] = gen & 0xFFFFFFFF
    vals["ns"] = _NS.pack(*c.ns)
    vals["setid"] = _SETID.pack(*c.setid)
    return _CONF.pack(*(vals[k] for k in abi.PCONF.index))


def dec_conf(b: bytes) -> tuple[ConfRow, int]:
    t = dict(zip(abi.PCONF.index, _CONF.unpack(b), strict=True))
    gen = t.pop("gen")
    t["ns"] = _NS.unpack(t["ns"])
    t["setid"] = _SETID.unpack(t["setid"])
    return ConfRow(**t), gen


# --------------------------------------------------------------------------- applier


@dataclass
class PublishStats:
    staged: int = 0
    cleaned: int = 0
    deleted: int = 0
    seconds: float = 0.0


KT = TypeVar("KT")
VT = TypeVar("VT")


class Applier:
    """Owns the writes to the policy maps. Call from one thread."""

    def __init__(self, maps: Mapping[str, MapLike], grace: float = 0.05,
                 sleep: Callable[[float], None] = time.sleep,
                 syscall_hook: Callable[[bool], None] | None = None,
                 exec_hook: Callable[[bool], None] | None = None,
                 args_hook: Callable[[bool], None] | None = None,
                 hooks: Callable[[str, bool], None] | None = None) -> None:
        missing = [n for n in MAP_NAMES if n not in maps]
        if missing:
            raise KeyError(f"policy maps missing: {missing}")
        self.maps = maps
        self.grace = grace
        self._sleep = sleep
        # attaches (True) / detaches (False) the syscall enforcement program, which is
        # attached only while a live policy has a syscall rule (agent/policy/programs.py)
        self.syscall_hook = syscall_hook
        # the same for the kill tier's programs on mmap / mprotect / script opens, attached
        # only while a live policy has an exec rule (bpf/progs/enforce_mmap.bpf.c)
        self.exec_hook = exec_hook
        # the same for the namespace / setid program (mr_enf_args, issue 13)
        self.args_hook = args_hook
        # issue 18, every enforcement hook kind (agent/policy/programs.py KINDS; the agent's
        # agent/bpf/pins.py Hooks.set): (kind, on); the three above are kinds of it
        self.hooks = hooks

    # --- reading the kernel's state --------------------------------------------------

    def live(self) -> tuple[ConfRow, int, int]:
        """(live configuration, its generation counter, index of the live entry)."""
        raw = self.maps["mr_pgen"].lookup(u32(0))
        idx = _U32.unpack(raw)[0] & 1 if raw else 0
        conf = self.maps["mr_pconf"].lookup(u32(idx))
        if conf is None:
            return ConfRow(), 0, idx
        row, gen = dec_conf(conf)
        return row, gen, idx

    def _read(self, name: str, dk: Callable[[bytes], KT],
              dv: Callable[[bytes], VT]) -> dict[KT, VT]:
        m = self.maps[name]
        out: dict[KT, VT] = {}
        for k in list(m.keys()):
            v = m.lookup(k)
            if v is not None:
                out[dk(k)] = dv(v)
        return out

    def read_scope(self) -> dict[int, int]:
        return self._read("mr_pscope", lambda b: _U64.unpack(b)[0], lambda b: _U64.unpack(b)[0])

    def read_syscalls(self) -> dict[int, int]:
        m = self.maps["mr_psys"]
        out = {}
        for nr in range(abi.SYS_MAX):
            v = m.lookup(u32(nr))
            if v is not None and _U64.unpack(v)[0]:
                out[nr] = _U64.unpack(v)[0]
        return out

    # --- writing -----------------------------------------------------------------------

    def set_scope(self, cgroup_id: int, mask: int) -> None:
        self.maps["mr_pscope"].update(u64(cgroup_id), u64(mask))

    def heartbeat(self, boot_ns: int) -> None:
        self.maps["mr_palive"].update(u32(0), u64(boot_ns))

    def _switch(self, conf: ConfRow, *, attach: bool) -> None:
        """On-demand programs: attach (before the flip) those the new rules need, detach
        (after the clean) those no live rule needs: every hook kind (`hooks`), or the
        syscall, mapped-exec and namespace/setid ones alone."""
        for hook, needed in ((self.syscall_hook, conf.active & conf.syscalls),
                             (self.exec_hook, conf.active & conf.exec),
                             (self.args_hook, conf.active & conf.args)):
            if hook is not None and bool(needed) == attach:
                hook(attach)
        if self.hooks is not None:
            for kind, need in kinds_needed(conf).items():
                if need == attach:
                    self.hooks(kind, attach)

    def publish(self, new: Compiled, scope: Mapping[int, int]) -> PublishStats:
        """Make *new* (rows) and *scope* (container cgroup id -> slots) live."""
        t0 = time.monotonic()
        st = PublishStats()
        old_conf, gen, idx = self.live()
        live = old_conf.active

        cur_exec = self._read("mr_pexec", dec_path_key, dec_exec)
        cur_file = self._read("mr_pfile", dec_path_key, dec_file)
        cur_net = self._read("mr_pnet", dec_net_key, dec_net)
        cur_sys = self.read_syscalls()
        cur_scope = self.read_scope()

        # 1. stage
        st.staged += self._stage_lpm("mr_pexec", new.exec, cur_exec, enc_path_key, enc_exec,
                                     lambda a, b: a | b, lambda v: v.masked(live), ExecVal())
        st.staged += self._stage_lpm("mr_pfile", new.files, cur_file, enc_path_key, enc_file,
                                     lambda a, b: a | b, lambda v: v.masked(live), FileVal())
        st.staged += self._stage_lpm("mr_pnet", new.net, cur_net, enc_net_key, enc_net,
                                     merge_net,
                                     lambda v: tuple(e.masked(live) for e in v), ())
        for nr in set(new.syscalls) | set(cur_sys):
            val = new.syscalls.get(nr, 0) | (cur_sys.get(nr, 0) & live)
            if val != cur_sys.get(nr, 0):
                self.maps["mr_psys"].update(u32(nr), u64(val))
                st.staged += 1
        for cg in set(scope) | set(cur_scope):
            if cg not in cur_scope:
                continue  # classified while we prepared: written below, after the flip
            val = scope.get(cg, 0) | (cur_scope[cg] & live)
            if val != cur_scope[cg]:
                self.maps["mr_pscope"].update(u64(cg), u64(val))
                st.staged += 1

        # 2. publish: the idle configuration entry, then one write of mr_pgen; the syscall
        # program is attached before rules that need it go live (no gap), detached after
        self._switch(new.conf, attach=True)
        idle = idx ^ 1
        self.maps["mr_pconf"].update(u32(idle), enc_conf(new.conf, gen + 1))
        self.maps["mr_pgen"].update(u32(0), u32(idle))

        # 3. grace
        self._sleep(self.grace)

        # 4. clean
        st.cleaned, st.deleted = self._clean_lpm("mr_pexec", new.exec, enc_path_key, enc_exec)
        c, d = self._clean_lpm("mr_pfile", new.files, enc_path_key, enc_file)
        st.cleaned += c
        st.deleted += d
        c, d = self._clean_lpm("mr_pnet", new.net, enc_net_key, enc_net)
        st.cleaned += c
        st.deleted += d
        for nr in set(new.syscalls) | set(cur_sys):
            self.maps["mr_psys"].update(u32(nr), u64(new.syscalls.get(nr, 0)))
        for cg in set(scope) | set(cur_scope):
            self.maps["mr_pscope"].update(u64(cg), u64(scope.get(cg, 0)))
        self._switch(new.conf, attach=False)
        st.seconds = time.monotonic() - t0
        log.info("policy maps published", extra={
            "generation": gen + 1, "active": f"{new.conf.active:#x}", "rows": new.rows(),
            "staged": st.staged, "deleted": st.deleted, "seconds": round(st.seconds, 4)})
        return st

    def _stage_lpm(self, name: str, new: Mapping[KT, VT],
                   cur: Mapping[KT, VT],
                   ek: Callable[[KT], bytes], ev: Callable[[VT], bytes],
                   combine: Callable[[VT, VT], VT], keep_live: Callable[[VT], VT],
                   empty: VT) -> int:
        m = self.maps[name]
        n = 0
        for k, v in new.items():
            old = cur.get(k)
            covering = lpm_cover(cur, k)  # type: ignore[arg-type]
            val = combine(v, keep_live(covering)) if covering is not None else v
            if old is None or ev(val) != ev(old):
                m.update(ek(k), ev(val))
                n += 1
        for k, v in cur.items():
            if k in new:
                continue
            covering = lpm_cover(new, k)  # type: ignore[arg-type]
            if covering is not None:
                val = combine(v, covering)
                if ev(val) != ev(v):
                    m.update(ek(k), ev(val))
                    n += 1
        del empty
        return n

    def _clean_lpm(self, name: str, new: Mapping[KT, VT], ek: Callable[[KT], bytes],
                   ev: Callable[[VT], bytes]) -> tuple[int, int]:
        m = self.maps[name]
        want = {ek(k): ev(v) for k, v in new.items()}
        cleaned = deleted = 0
        for kb in list(m.keys()):
            if kb not in want:
                m.delete(kb)
                deleted += 1
        for kb, vb in want.items():
            if m.lookup(kb) != vb:
                m.update(kb, vb)
                cleaned += 1
        return cleaned, deleted

    def clear(self) -> None:
        """Deactivate every policy (publish an empty set)."""
        self.publish(Compiled(ConfRow()), {})
