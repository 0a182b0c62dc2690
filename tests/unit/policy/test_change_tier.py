"""Which programs see a change by identity, per kernel (file-change tier: BPF LSM, fmod_ret
on security_* functions, the 6.13+ ctime tracepoints, or none)."""

from __future__ import annotations

from moray.agent.bpf.features import Features, HookProbe, Tier
from moray.agent.policy.programs import programs_to_skip

PROGS = [("mr_lsm_ident_perm", "lsm/inode_permission"),
         ("mr_fmr_ident_perm", "fmod_ret/security_inode_permission"),
         ("mr_fmr_ident_chmod", "fmod_ret/security_path_chmod"),
         ("mr_enf_ctime", "tp_btf/inode_set_ctime_to_ts"),
         ("mr_enf_ctime_mg", "tp_btf/ctime_ns_xchg")]


def test_lsm_tier_loads_only_the_lsm_program() -> None:
    skip = programs_to_skip(PROGS, bpf_lsm=True, fmod_ret=True)
    assert skip == ["mr_enf_ctime", "mr_enf_ctime_mg", "mr_fmr_ident_chmod", "mr_fmr_ident_perm"]


def test_fmod_ret_tier_replaces_the_ctime_tracepoints() -> None:
    skip = programs_to_skip(PROGS, bpf_lsm=False, fmod_ret=True)
    assert skip == ["mr_enf_ctime", "mr_enf_ctime_mg", "mr_lsm_ident_perm"]


def test_fmod_ret_program_whose_function_is_missing_is_not_loaded() -> None:
    """security_path_* exist only with CONFIG_SECURITY_PATH."""
    skip = programs_to_skip(PROGS, bpf_lsm=False, fmod_ret=True,
                            has_func=lambda n: not n.startswith("security_path_"))
    assert "mr_fmr_ident_chmod" in skip and "mr_fmr_ident_perm" not in skip


def test_kill_tier_without_trampolines() -> None:
    skip = programs_to_skip(PROGS, bpf_lsm=False, fmod_ret=False)
    assert skip == ["mr_fmr_ident_chmod", "mr_fmr_ident_perm", "mr_lsm_ident_perm"]


def _features(hooks: dict[str, bool], lsm: list[str], ctime: bool) -> Features:
    f = Features(kernel="x", btf=True, btf_path="", root=True, bpffs=None, tracefs=None,
                 cgroup_v2="/sys/fs/cgroup", cgroup_hybrid=False, lsm_active=lsm,
                 hooks={k: HookProbe(v) for k, v in hooks.items()}, ctime_tracepoint=ctime)
    return f


def test_file_change_tier_per_kernel() -> None:
    base = {"tp_btf": True, "send_signal": True, "tracepoint": True}
    assert _features({**base, "lsm": True}, ["bpf"], False).tiers()["file-change"] == \
        Tier.LSM_DENY
    # lsm programs load but `bpf` is not active: fmod_ret where trampolines work
    assert _features({**base, "lsm": True, "fmod_ret": True}, ["apparmor"],
                     False).tiers()["file-change"] == Tier.FMODRET_DENY
    assert _features(base, ["apparmor"], True).tiers()["file-change"] == Tier.KILL_AFTER
    assert _features(base, ["apparmor"], False).tiers()["file-change"] == Tier.NONE
