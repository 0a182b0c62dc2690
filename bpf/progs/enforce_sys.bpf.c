// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Syscall deny list (mr_psys: syscall nr -> slots): tp_btf raw_syscalls/sys_enter, SIGKILL. The
 * signal is delivered when the syscall returns: the syscall itself runs (kill-after tier),
 * nothing after it does. Native (64-bit) syscall numbers only; the array lookup comes
 * first so a syscall no policy names costs one array read.
 *
 * Mount calls (issue 13, must-have 5): a mount the killed call made is still there when
 * the task dies. For mount, umount2, open_tree, move_mount, fsmount and mount_setattr the
 * record is written at the call's exit instead (tracepoint syscalls/sys_exit_<name>, only
 * that syscall pays for it): sys_enter sends the signal and keeps the verdict and the
 * arguments in mr_pmnt; the exit program adds the result (MR_ES_RESULT: flags and return
 * value in addr) and the target (path as passed, with the directory a relative one starts
 * from), so the agent finds and detaches what was mounted (agent/policy/mount_residue.py).
 * Where the LSM tier refuses mount, move_mount and umount2 first (lsm/sb_mount,
 * lsm/move_mount, lsm/sb_umount: cfg_sys_lsm) those syscalls are left to it here.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../maps/mount.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define EPERM 1
#define NR_mount 165
#define NR_umount2 166
#define NR_open_tree 428
#define NR_move_mount 429
#define NR_fsmount 432
#define NR_mount_setattr 442
#define MR_AT_FDCWD -100
#define MR_AT_EMPTY_PATH 0x1000
#define MR_MOVE_MOUNT_T_EMPTY_PATH 0x40

/* LSM tier: the agent sets this bit of cfg_args_lsm (agent/policy/programs.py
 * ARGS_LSM_GROUPS) where BPF LSM is usable and the kernel has sb_mount, move_mount and
 * sb_umount: enforcing rules on mount, move_mount and umount2 are then the LSM programs'
 * (EPERM, nothing mounted); monitor-mode ones stay here (would-block with the result) */
#define MR_ARGS_LSM_MOUNT 4
__weak const volatile __u32 cfg_args_lsm = 0;
static __always_inline int mount_nr(__u32 nr)
{
	return nr == NR_mount || nr == NR_umount2 || nr == NR_open_tree ||
	       nr == NR_move_mount || nr == NR_fsmount || nr == NR_mount_setattr;
}

static __always_inline int lsm_mount_nr(__u32 nr)
{
	return (cfg_args_lsm & MR_ARGS_LSM_MOUNT) &&
	       (nr == NR_mount || nr == NR_umount2 || nr == NR_move_mount);
}

/* Keep a mount call's verdict and arguments for its exit; 0 when there is no room. */
static __always_inline int mount_keep(struct pt_regs *regs, __u32 nr, __u64 hit, __u64 enf)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct mr_pmnt s = {};

	s.policies = hit;
	s.enforced = enf;
	s.nr = nr;
	s.action = action_of(enf, MR_EA_KILLED);
	s.args[0] = BPF_CORE_READ(regs, di);
	s.args[1] = BPF_CORE_READ(regs, si);
	s.args[2] = BPF_CORE_READ(regs, dx);
	s.args[3] = BPF_CORE_READ(regs, r10);
	s.args[4] = BPF_CORE_READ(regs, r8);
	return bpf_map_update_elem(&mr_pmnt, &tid, &s, BPF_ANY) == 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(mr_enf_sys, struct pt_regs *regs, long id)
{
	__u32 nr = id;
	struct mr_pconf *c;
	struct mr_enforce ev;
	__u64 *m, scope, hit, enf;
	int pending;

	if (nr >= MR_SYS_MAX)
		return 0;
	/* every syscall on the host comes here: with no syscall rule active, stop at once */
	c = pconf();
	if (!c || !(c->active & c->syscalls))
		return 0;
	m = bpf_map_lookup_elem(&mr_psys, &nr);
	if (!m || !*m || !(c->active & c->syscalls & *m))
		return 0;
	scope = scope_of(c, bpf_get_current_cgroup_id(), &pending);
	hit = *m & scope & c->active;
	if (!hit)
		return 0;
	if (mount_nr(nr) && runtime_setup(bpf_get_current_cgroup_id(), pending))
		return 0;
	if (lsm_mount_nr(nr) && (hit & c->enforce))
		return 0; /* refused by the LSM program below */
	enf = hit & c->enforce;
	if (enf)
		bpf_send_signal(SIGKILL);
	if (mount_nr(nr) && mount_keep(regs, nr, hit, enf))
		return 0; /* the record is written at the call's exit */
	enf_init(&ev, MR_EK_SYSCALL, action_of(enf, MR_EA_KILLED), hit, enf);
	ev.arg = nr;
	hdr_init(&ev.hdr, MR_OP_ENFORCE, sizeof(ev));
	emit_now(&ev, sizeof(ev));
	return 0;
}

/* The enforce record of a kept mount call, with its result and target. */
static __always_inline int mount_exit(long id, long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct mr_pheap_buf *h = pheap();
	struct mr_pmnt *s = bpf_map_lookup_elem(&mr_pmnt, &tid);
	struct mr_enforce *ev;
	const struct path *dir = 0;
	const char *upath = 0;
	struct file *df;
	__u64 flags = 0, dfd = MR_AT_FDCWD;
	__u32 off = 0, trunc = 0, len1 = 0, len2 = 0, nr;
	int by_fd = 0;
	long r;

	if (!s || !h)
		return 0;
	nr = s->nr;
	if (nr != id) { /* a row left by a call whose exit was not seen */
		bpf_map_delete_elem(&mr_pmnt, &tid);
		return 0;
	}
	ev = (struct mr_enforce *)h->rec;
	enf_init(ev, MR_EK_SYSCALL, s->action, s->policies, s->enforced);
	ev->arg = nr;
	ev->family = MR_ES_RESULT;
	switch (nr) {
	case NR_mount: /* source, target, fstype, flags, data */
		upath = (const char *)s->args[1], flags = s->args[3];
		break;
	case NR_umount2: /* target, flags */
		upath = (const char *)s->args[0], flags = s->args[1];
		break;
	case NR_move_mount: /* from_dfd, from_path, to_dfd, to_path, flags */
		dfd = s->args[2], upath = (const char *)s->args[3], flags = s->args[4];
		by_fd = flags & MR_MOVE_MOUNT_T_EMPTY_PATH;
		break;
	case NR_open_tree: /* dfd, path, flags: the source (a detached copy) */
	case NR_mount_setattr: /* dfd, path, flags, attr, size */
		dfd = s->args[0], upath = (const char *)s->args[1], flags = s->args[2];
		by_fd = flags & MR_AT_EMPTY_PATH;
		break;
	default: /* fsmount: a detached mount, no path */
		flags = s->args[1];
		break;
	}
	bpf_map_delete_elem(&mr_pmnt, &tid);
	put_u64(ev->addr, flags);
	put_u64(ev->addr + 8, (__u64)ret);
	if (upath) {
		r = bpf_probe_read_user_str(h->k2.path, MR_PATH_KEY, upath);
		len2 = r > 1 ? r - 1 : 0;
		if (len2 && h->k2.path[0] == '/') {
			dir = 0;
		} else if ((len2 || by_fd) && dfd == (__u64)(__s64)MR_AT_FDCWD) {
			struct fs_struct *fs = BPF_CORE_READ(t, fs);

			dir = __builtin_preserve_access_index(&fs->pwd);
		} else if (len2 || by_fd) {
			df = task_fd_file(t, dfd);
			if (df)
				dir = __builtin_preserve_access_index(&df->f_path);
		}
	}
	if (dir) {
		off = path_resolve(dir, h->pbuf, &trunc);
		len1 = path_copy(ev->data, h->pbuf, off);
	}
	emit_paths(h, ev, len1, len2);
	return 0;
}

#define MOUNT_EXIT(name)                                                              \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                   \
	int mr_enf_mx_##name(struct trace_event_raw_sys_exit *ctx)                    \
	{                                                                             \
		return mount_exit(ctx->id, ctx->ret);                                 \
	}

MOUNT_EXIT(mount)
MOUNT_EXIT(umount)
MOUNT_EXIT(open_tree)
MOUNT_EXIT(move_mount)
MOUNT_EXIT(fsmount)
MOUNT_EXIT(mount_setattr)

/* LSM tier: refuse a mount-family call an enforcing syscall rule denies, before anything
 * is mounted, moved or unmounted. target: where (resolved by the kernel). */
static __always_inline int mount_lsm(__u32 nr, const struct path *target, __u64 flags)
{
	struct mr_pconf *c = pconf();
	struct mr_pheap_buf *h;
	struct mr_enforce *ev;
	__u64 *m, cgid, scope, hit, enf;
	__u32 off, trunc = 0, len, size;
	int pending;

	if (!c || !(c->active & c->syscalls))
		return 0;
	m = bpf_map_lookup_elem(&mr_psys, &nr);
	if (!m || !(*m & c->active & c->syscalls))
		return 0;
	cgid = bpf_get_current_cgroup_id();
	scope = scope_of(c, cgid, &pending);
	hit = *m & scope;
	enf = hit & c->enforce;
	if (!enf || runtime_setup(cgid, pending))
		return 0; /* monitor mode: mr_enf_sys reports it with its result */
	h = pheap();
	if (!h)
		return -EPERM;
	ev = (struct mr_enforce *)h->rec;
	enf_init(ev, MR_EK_SYSCALL, MR_EA_BLOCKED, hit, enf);
	ev->arg = nr;
	ev->family = MR_ES_RESULT;
	put_u64(ev->addr, flags);
	put_u64(ev->addr + 8, (__u64)(__s64)-EPERM);
	off = path_resolve(target, h->pbuf, &trunc);
	len = path_copy(ev->data, h->pbuf, off);
	ev->path_len = len;
	size = sizeof(*ev) + (len & MR_HALF_MASK);
	hdr_init(&ev->hdr, MR_OP_ENFORCE, size);
	if (size <= sizeof(h->rec))
		emit_now(ev, size);
	return -EPERM;
}

SEC("lsm/sb_mount")
int BPF_PROG(mr_lsm_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags, void *data, int ret)
{
	if (ret)
		return ret;
	return mount_lsm(NR_mount, path, flags);
}

/* move_mount(2); mount(2) with MS_MOVE comes here too, after sb_mount decided it */
SEC("lsm/move_mount")
int BPF_PROG(mr_lsm_move_mount, const struct path *from_path, const struct path *to_path,
	     int ret)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	if (ret || BPF_CORE_READ(regs, orig_ax) != NR_move_mount)
		return ret;
	return mount_lsm(NR_move_mount, to_path, 0);
}

SEC("lsm/sb_umount")
int BPF_PROG(mr_lsm_umount, struct vfsmount *mnt, int flags, int ret)
{
	struct path p = {};

	if (ret)
		return ret;
	p.mnt = mnt;
	p.dentry = BPF_CORE_READ(mnt, mnt_root);
	return mount_lsm(NR_umount2, &p, flags);
}
