// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Changes to covered files and directories by identity (mr_pino), whatever name or syscall
 * made them: a new name for a protected file (link), a rename into or out of a protected
 * directory, unlink, mkdir, chmod/chown, truncate, setxattr, utimes ... Every such change
 * stamps the inode's ctime (the directory's, for a name added or removed), and the kernel
 * has a tracepoint there since 6.13 (timestamp/inode_set_ctime_to_ts, and ctime_ns_xchg on
 * multigrain filesystems): it fires inside the syscall, in the changing task, with the
 * inode. Kill-after tier: the change is made, the task is killed before it returns; the
 * agent reports what was left (agent/policy/identity.py).
 *
 * Write rules (deny / monitor write) act on any change; read rules act on a new name for
 * the file (link, linkat): a hard link would otherwise carry a readable name out of the
 * rule's path. Opens are left to enforce_file.bpf.c (the same identity, checked at open).
 * On kernels without the tracepoints (before 6.13) these programs are not loaded
 * (agent/policy/programs.py); where BPF LSM is usable, the lsm programs below refuse the
 * same changes with EPERM before they happen. Where BPF LSM is not active but BPF
 * trampolines work (most distribution kernels: fentry loads, `bpf` is not in the LSM
 * list), the fmod_ret programs at the end do the same on the security_* functions those
 * hooks are called from: a nonzero return skips the function and is the call's error.
 * Tier "fmodret-deny" (agent/bpf/features.py, key "file-change").
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define EPERM 1
#define PF_KTHREAD 0x00200000
#define MAY_WRITE 0x2
#define MAY_OPEN 0x20
/* x86_64 syscall numbers the check treats specially */
#define NR_open 2
#define NR_creat 85
#define NR_link 86
#define NR_openat 257
#define NR_linkat 265
#define NR_openat2 437

static __always_inline int is_agent(void)
{
	__u32 zero = 0, *tgid = bpf_map_lookup_elem(&mr_pagent, &zero);

	return tgid && *tgid && *tgid == (bpf_get_current_pid_tgid() >> 32);
}

static __always_inline __u32 current_syscall(void)
{
	struct task_struct *t = bpf_get_current_task_btf();

	return (__u32)BPF_CORE_READ((struct pt_regs *)bpf_task_pt_regs(t), orig_ax);
}

/* op: syscall nr on the kill tier; on the LSM tier 0 for a write, NR_link for a new name. */
static __always_inline int ident_check(struct inode *inode, __u32 op, int lsm)
{
	struct mr_pconf *c = pconf();
	struct mr_pino_val *v;
	struct mr_pino_key ik;
	struct mr_enforce ev;
	__u64 scope, deny, mon, hit, enf;
	int pending;

	if (!c || !(c->active & c->files) || !inode)
		return 0;
	inode_key(&ik, inode);
	v = bpf_map_lookup_elem(&mr_pino, &ik);
	if (!v)
		return 0;
	if (is_agent())
		return 0; /* the agent undoing what a killed task left */
	deny = v->deny_write;
	mon = v->mon_write;
	if (op == NR_link || op == NR_linkat) {
		deny |= v->deny_read;
		mon |= v->mon_read;
	}
	scope = scope_of(c, bpf_get_current_cgroup_id(), &pending) & c->files;
	hit = (deny | mon) & scope;
	if (!hit)
		return 0;
	enf = deny & scope & c->enforce;
	if (enf && !lsm)
		bpf_send_signal(SIGKILL);
	enf_init(&ev, MR_EK_LINK, action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED), hit, enf);
	ev.arg = op;
	__builtin_memcpy(ev.addr, &ik, sizeof(ik));
	hdr_init(&ev.hdr, MR_OP_ENFORCE, sizeof(ev));
	emit_now(&ev, sizeof(ev));
	return (enf && lsm) ? -EPERM : 0;
}

static __always_inline int on_ctime(struct inode *inode)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 nr;

	if (BPF_CORE_READ(t, flags) & PF_KTHREAD)
		return 0;
	nr = current_syscall();
	/* an open (O_CREAT, O_TRUNC) is checked at its exit by enforce_file.bpf.c */
	if (nr == NR_open || nr == NR_openat || nr == NR_openat2 || nr == NR_creat)
		return 0;
	return ident_check(inode, nr, 0);
}

SEC("tp_btf/inode_set_ctime_to_ts")
int BPF_PROG(mr_enf_ctime, struct inode *inode, struct timespec64 *ts)
{
	return on_ctime(inode);
}

SEC("tp_btf/ctime_ns_xchg")
int BPF_PROG(mr_enf_ctime_mg, struct inode *inode, u32 old, u32 new, u32 cur)
{
	return on_ctime(inode);
}

/* LSM tier: writing to a covered directory (create, unlink, rename on either side, link's
 * new directory, mkdir, rmdir, symlink, mknod) asks for MAY_WRITE on it; so does
 * truncate(2) of a covered file. An open (MAY_OPEN) is left to lsm/file_open, which checks
 * the path and the identity of the file opened and reports it as a file decision. */
static __always_inline int deny_perm(struct inode *inode, int mask)
{
	if (!(mask & MAY_WRITE) || (mask & MAY_OPEN))
		return 0;
	return ident_check(inode, 0, 1);
}

/* a new name for a covered file: refused for read rules too */
static __always_inline int deny_link(struct dentry *old_dentry)
{
	return ident_check(BPF_CORE_READ(old_dentry, d_inode), NR_link, 1);
}

/* chmod and chown of a covered file (truncate asks for MAY_WRITE above). path_* hooks:
 * their signatures are the same on every kernel this supports. */
static __always_inline int deny_attr(const struct path *path)
{
	return ident_check(BPF_CORE_READ(path, dentry, d_inode), 0, 1);
}

SEC("lsm/inode_permission")
int BPF_PROG(mr_lsm_ident_perm, struct inode *inode, int mask, int ret)
{
	return ret ? ret : deny_perm(inode, mask);
}

SEC("lsm/inode_link")
int BPF_PROG(mr_lsm_ident_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry, int ret)
{
	return ret ? ret : deny_link(old_dentry);
}

SEC("lsm/path_chmod")
int BPF_PROG(mr_lsm_ident_chmod, const struct path *path, umode_t mode, int ret)
{
	return ret ? ret : deny_attr(path);
}

SEC("lsm/path_chown")
int BPF_PROG(mr_lsm_ident_chown, const struct path *path, __u32 uid, __u32 gid, int ret)
{
	return ret ? ret : deny_attr(path);
}

/* fmod_ret tier: the same checks on the security_* functions the LSM hooks are called
 * from (same arguments, plus the return of earlier fmod_ret programs). Loaded only where
 * BPF LSM is not usable and fmod_ret attaches (agent/policy/programs.py). */
SEC("fmod_ret/security_inode_permission")
int BPF_PROG(mr_fmr_ident_perm, struct inode *inode, int mask, int ret)
{
	return ret ? ret : deny_perm(inode, mask);
}

SEC("fmod_ret/security_inode_link")
int BPF_PROG(mr_fmr_ident_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry, int ret)
{
	return ret ? ret : deny_link(old_dentry);
}

SEC("fmod_ret/security_path_chmod")
int BPF_PROG(mr_fmr_ident_chmod, const struct path *path, umode_t mode, int ret)
{
	return ret ? ret : deny_attr(path);
}

SEC("fmod_ret/security_path_chown")
int BPF_PROG(mr_fmr_ident_chown, const struct path *path, __u32 uid, __u32 gid, int ret)
{
	return ret ? ret : deny_attr(path);
}
