"""What this kernel offers, found by trying, and the enforcement tier picked per rule kind.

Each BPF hook kind is probed by loading (and, where loading alone proves nothing, attaching)
a trivial program from probes.bpf.o on its own. BPF LSM needs two more facts: the program
loads *and* `bpf` is in the active LSM list (securityfs /sys/kernel/security/lsm): an LSM
program attached while `bpf` is not active loads and attaches without error and never runs.

Tiers (DESIGN.md §2):
  exec     lsm-deny (lsm/bprm_check_security -> EPERM)  else  kill (tp_btf/sched_process_exec
           + SIGKILL before the new image's first instruction)
  file     lsm-deny (lsm/file_open -> EPERM)  else  kill-after (sys_enter_openat + SIGKILL;
           the open itself completes)
  network  cgroup-deny (cgroup/connect4|6, sendmsg4|6 -> EPERM) everywhere
  syscall  kill-after (raw_syscalls/sys_enter + SIGKILL; the syscall is not prevented)
  file-change  a covered file changed by identity (link, rename, chmod, ... whatever name;
           bpf/progs/enforce_ident.bpf.c): lsm-deny (inode_permission, inode_link,
           path_chmod, path_chown -> EPERM)  else  fmodret-deny (fmod_ret on the
           security_* functions of those hooks -> EPERM, where BPF trampolines work but
           `bpf` is not an active LSM)  else  kill-after (timestamp/* tracepoints of 6.13+)
           else  none (opens are still checked by identity, changes are not seen)
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from moray.agent.bpf import libbpf
from moray.agent.bpf.loader import BpfAttachError, BpfError, BpfObject, ensure_mount, object_path

log = logging.getLogger(__name__)


class Tier(StrEnum):
    LSM_DENY = "lsm-deny"        # the action is refused with EPERM before it happens
    KILL = "kill"                # the process is killed before the denied image runs
    KILL_AFTER = "kill-after"    # the process is killed; the syscall itself completed
    FMODRET_DENY = "fmodret-deny"  # refused with EPERM by fmod_ret on a security_* function
    CGROUP_DENY = "cgroup-deny"  # connect()/sendmsg() fail with EPERM
    NONE = "none"                # cannot be enforced here; events only


@dataclass(frozen=True, slots=True)
class HookProbe:
    ok: bool
    detail: str = ""


@dataclass
class Features:
    kernel: str
    btf: bool
    btf_path: str
    root: bool
    bpffs: str | None
    tracefs: str | None
    cgroup_v2: str | None
    cgroup_hybrid: bool
    lsm_active: list[str] | None  # None: securityfs unreadable
    hooks: dict[str, HookProbe] = field(default_factory=dict)
    # the kernel's BTF names the timestamp/inode_set_ctime_to_ts tracepoint (6.13+)
    ctime_tracepoint: bool = False

    @property
    def fmod_ret(self) -> bool:
        """fmod_ret on security_* functions attaches: the file-change tier without BPF LSM."""
        return self.hooks.get("fmod_ret", HookProbe(False)).ok

    @property
    def task_storage(self) -> bool:
        """Syscall tracepoint programs may use task-local storage (6.1 and 6.18 do): the file
        programs keep an open in flight there, else in a hash keyed by thread id."""
        return self.hooks.get("task_storage", HookProbe(False)).ok

    @property
    def bpf_lsm(self) -> bool:
        """BPF LSM usable: programs load and `bpf` is an active LSM."""
        return self.hooks.get("lsm", HookProbe(False)).ok and "bpf" in (self.lsm_active or [])

    def tiers(self) -> dict[str, Tier]:
        ok = {k: v.ok for k, v in self.hooks.items()}
        exec_t = Tier.LSM_DENY if self.bpf_lsm else (
            Tier.KILL if ok.get("tp_btf") and ok.get("send_signal") else Tier.NONE)
        file_t = Tier.LSM_DENY if self.bpf_lsm else (
            Tier.KILL_AFTER if ok.get("tracepoint") and ok.get("send_signal") else Tier.NONE)
        net_t = Tier.CGROUP_DENY if ok.get("cgroup_connect4") and self.cgroup_v2 else Tier.NONE
        sys_t = Tier.KILL_AFTER if ok.get("raw_tracepoint") and ok.get("send_signal") else Tier.NONE
        # issue 13: namespaces: kill-after (tp_btf sys_enter); on the LSM tier user
        # namespaces are refused by lsm/userns_create (events say lsm-deny), the others
        # stay kill-after. setid: lsm-deny (path_chmod, path_mknod, inode_setxattr) or
        # kill-after
        args_t = Tier.KILL_AFTER if ok.get("tp_btf") and ok.get("send_signal") else Tier.NONE
        setid_t = Tier.LSM_DENY if self.bpf_lsm else args_t
        if self.bpf_lsm:
            change_t = Tier.LSM_DENY
        elif self.fmod_ret:
            change_t = Tier.FMODRET_DENY
        elif self.ctime_tracepoint and ok.get("tp_btf") and ok.get("send_signal"):
            change_t = Tier.KILL_AFTER
        else:
            change_t = Tier.NONE
        return {"exec": exec_t, "file": file_t, "network": net_t, "syscall": sys_t,
                "namespaces": args_t, "setid": setid_t, "file-change": change_t}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["hooks"] = {k: {"ok": v.ok, "detail": v.detail} for k, v in self.hooks.items()}
        d["bpf_lsm"] = self.bpf_lsm
        d["tiers"] = {k: str(v) for k, v in self.tiers().items()}
        return d


# probe name -> program in probes.bpf.o; attach too where load alone proves nothing
_PROBES: dict[str, tuple[str, bool]] = {
    "tracepoint": ("probe_tracepoint", True),
    "raw_tracepoint": ("probe_raw_tp", True),
    "tp_btf": ("probe_tp_btf", True),
    "cgroup_connect4": ("probe_cgroup_connect4", True),
    "ringbuf": ("probe_ringbuf_output", False),
    "send_signal": ("probe_send_signal", False),
    "lsm": ("probe_lsm", True),
    "fentry": ("probe_fentry", True),
    "fmod_ret": ("probe_fmod_ret", True),
    "kprobe": ("probe_kprobe", True),
    # task-local storage from a syscall tracepoint: file.bpf.c's opens in flight
    "task_storage": ("probe_task_storage", False),
}


def _mountinfo(proc: str) -> list[tuple[str, str]]:
    out = []
    try:
        with open(f"{proc}/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                out.append((left.split()[4], right.split()[0]))
    except OSError:
        pass
    return out


def find_cgroup_v2(proc: str = "/proc") -> tuple[str | None, bool]:
    """(cgroup2 mount point, hybrid?) — hybrid when v1 controller hierarchies exist too."""
    mounts = _mountinfo(proc)
    v2 = [p for p, t in mounts if t == "cgroup2"]
    v1 = any(t == "cgroup" for _, t in mounts)
    v2.sort(key=lambda p: (p != "/sys/fs/cgroup", p != "/sys/fs/cgroup/unified", len(p)))
    return (v2[0] if v2 else None), v1


def read_lsm_list(securityfs: str = "/sys/kernel/security") -> list[str] | None:
    if os.getuid() == 0:
        ensure_mount(securityfs, "securityfs")
    try:
        with open(f"{securityfs}/lsm") as f:
            return [x for x in f.read().strip().split(",") if x]
    except OSError:
        return None


def _probe_one(prog: str, attach: bool, cgroup: str | None) -> HookProbe:
    try:
        obj = BpfObject.open(object_path("probes.bpf.o"))
    except (OSError, BpfError) as err:
        return HookProbe(False, f"cannot open probes: {err}")
    try:
        obj.only([prog])
        try:
            obj.load()
        except BpfError as err:
            first = str(err).splitlines()[0]
            return HookProbe(False, f"load: {first}")
        if attach:
            try:
                obj.attach_all(cgroup)
            except BpfAttachError as err:
                return HookProbe(False, f"attach: {err}")
        return HookProbe(True, "loaded and attached" if attach else "loaded")
    finally:
        obj.close()


def probe(proc: str = "/proc", btf_path: str = "/sys/kernel/btf/vmlinux") -> Features:
    """Probe the running kernel. Needs root for the load probes; without root they report
    the permission error rather than guessing."""
    from moray.agent.bpf.loader import BPFFS, TRACEFS, ensure_bpffs, ensure_tracefs

    root = os.geteuid() == 0
    cg, hybrid = find_cgroup_v2(proc)
    bpffs = BPFFS if (root and ensure_bpffs()) else None
    tracefs = TRACEFS if (root and ensure_tracefs()) else None
    f = Features(kernel=os.uname().release, btf=os.path.exists(btf_path), btf_path=btf_path,
                 root=root, bpffs=bpffs, tracefs=tracefs, cgroup_v2=cg, cgroup_hybrid=hybrid,
                 lsm_active=read_lsm_list())
    try:
        libbpf.lib()
        f.ctime_tracepoint = has_btf_type(btf_path, "btf_trace_inode_set_ctime_to_ts")
    except OSError as err:
        f.hooks = {k: HookProbe(False, str(err)) for k in _PROBES}
        return f
    # a failed probe is an answer, not a problem: keep libbpf's complaints out of the log
    libbpf_log = logging.getLogger("libbpf")
    level = libbpf_log.level
    libbpf_log.setLevel(logging.CRITICAL)
    try:
        for name, (prog, attach) in _PROBES.items():
            f.hooks[name] = _probe_one(prog, attach, cg)
    finally:
        libbpf_log.setLevel(level)
    return f


def has_btf_type(btf_path: str, name: str) -> bool:
    """The kernel's BTF has a typedef of this name (a tracepoint's btf_trace_<name>)."""
    from moray.agent.bpf.btf import Btf
    from moray.agent.bpf.libbpf import BTF_KIND_TYPEDEF

    try:
        with Btf(btf_path) as kbtf:
            return kbtf.has(name, BTF_KIND_TYPEDEF)
    except OSError:
        return False


def format_text(f: Features) -> str:
    lines = [
        f"kernel          {f.kernel}",
        f"BTF             {'yes' if f.btf else 'NO'} ({f.btf_path})",
        f"root            {'yes' if f.root else 'no'}",
        f"bpffs           {f.bpffs or 'not mounted'}",
        f"tracefs         {f.tracefs or 'not mounted'}",
        f"cgroup v2       {f.cgroup_v2 or 'none'}"
        + (" (hybrid: v1 controllers beside it)" if f.cgroup_hybrid else ""),
        "active LSMs     " + (",".join(f.lsm_active) if f.lsm_active is not None
                              else "unknown (securityfs unreadable)"),
        "hooks:",
    ]
    for name, h in f.hooks.items():
        lines.append(f"  {name:<16}{'yes' if h.ok else 'no':<5}{h.detail}")
    lines.append(f"BPF LSM usable  {'yes' if f.bpf_lsm else 'no'}")
    lines.append("enforcement tier per rule kind:")
    explain = {
        Tier.LSM_DENY: "denied with EPERM before it happens",
        Tier.KILL: "process killed (SIGKILL) before the new image runs",
        Tier.KILL_AFTER: "process killed (SIGKILL) after the syscall completed",
        Tier.FMODRET_DENY: "denied with EPERM before it happens (fmod_ret, no BPF LSM)",
        Tier.CGROUP_DENY: "connect/sendmsg fail with EPERM",
        Tier.NONE: "not enforceable here: events only",
    }
    for kind, tier in f.tiers().items():
        lines.append(f"  {kind:<16}{tier:<12} {explain[tier]}")
    return "\n".join(lines)
