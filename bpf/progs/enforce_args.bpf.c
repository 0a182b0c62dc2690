// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Rules on what a syscall's arguments ask for, whichever syscall asks (issue 13):
 *
 *   namespaces (mr_pconf.ns[MR_NS_*])  creating a namespace (unshare, clone, clone3) or
 *                                      entering one (setns), per namespace type;
 *   setid (mr_pconf.setid[MR_SETID_*]) setting the setuid / setgid bit (chmod, fchmod,
 *                                      fchmodat, fchmodat2, and a new file's mode: open,
 *                                      openat, openat2, creat with O_CREAT / O_TMPFILE,
 *                                      mknod, mknodat) or file capabilities (the
 *                                      security.capability xattr: setxattr, lsetxattr,
 *                                      fsetxattr, setxattrat).
 *
 * Kill tier, mr_enf_args on tp_btf/sys_enter (attached only while a live policy has such a
 * rule: agent/bpf/pins.py OnDemandLink): SIGKILL is sent before the syscall runs.
 *   - clone / clone3: copy_process() aborts a fork when its caller has a fatal signal
 *     pending, so no child and no namespace is ever made (the kill lands first). clone3's
 *     flags are read from user memory here; another thread may change them after this
 *     read (the LSM tier's userns_create has no such window for user namespaces).
 *   - unshare / setns run, then the task dies: a new namespace is held only by the dying
 *     task, so it goes with it (unless another process opened /proc/<pid>/ns/ files meanwhile).
 *   - chmod & co run, then the task dies: the bit IS set. The record names the file (a
 *     descriptor's file resolved here; a relative path with the directory it starts from)
 *     so the agent clears it again (agent/policy/residue.py).
 * LSM tier (where BPF LSM is usable and the kernel has the hooks, cfg_args_lsm):
 * lsm/userns_create, lsm/path_chmod,
 * lsm/path_mknod and lsm/inode_setxattr return -EPERM before anything happens; the
 * tracepoint program then handles only what has no LSM hook: namespaces other than user
 * ones, and setns (kill-after as above).
 *
 * Container start-up is not a violation: a container runtime creates and enters the
 * container's namespaces from inside the container's cgroup (runc applies the cgroup
 * first), before it pivots into the container's root. A task of a container cgroup whose
 * root is still the host's root (cfg_host_root_*, set by the agent) is that runtime (or
 * `runc exec` joining), never the workload, which cannot get the host's root back.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define EPERM 1
#define MR_AT_FDCWD -100
#define MR_AT_EMPTY_PATH 0x1000
#define MR_O_CREAT 0100
#define MR_O_TMPFILE 020000000
#define MR_S_IFMT 0170000
#define MR_S_IFREG 0100000
#define MR_S_ISUID 04000
#define MR_S_ISGID 02000
#define MR_S_IXGRP 00010
#define MR_NSFS_MAGIC 0x6e736673
#define MR_CSIGNAL 0xff

#define MR_CLONE_NEWTIME 0x00000080
#define MR_CLONE_NEWNS 0x00020000
#define MR_CLONE_NEWCGROUP 0x02000000
#define MR_CLONE_NEWUTS 0x04000000
#define MR_CLONE_NEWIPC 0x08000000
#define MR_CLONE_NEWUSER 0x10000000
#define MR_CLONE_NEWPID 0x20000000
#define MR_CLONE_NEWNET 0x40000000
#define MR_CLONE_NS_ALL (MR_CLONE_NEWTIME | MR_CLONE_NEWNS | MR_CLONE_NEWCGROUP | \
			 MR_CLONE_NEWUTS | MR_CLONE_NEWIPC | MR_CLONE_NEWUSER | \
			 MR_CLONE_NEWPID | MR_CLONE_NEWNET)

/* x86_64 numbers */
#define NR_open 2
#define NR_clone 56
#define NR_creat 85
#define NR_chmod 90
#define NR_fchmod 91
#define NR_mknod 133
#define NR_setxattr 188
#define NR_lsetxattr 189
#define NR_fsetxattr 190
#define NR_openat 257
#define NR_mknodat 259
#define NR_fchmodat 268
#define NR_unshare 272
#define NR_setns 308
#define NR_clone3 435
#define NR_openat2 437
#define NR_fchmodat2 452
#define NR_setxattrat 463

/* Which checks the LSM programs do (the agent loads them only where BPF LSM is usable and
 * the kernel has their hooks: userns_create is 6.1+, path_* need CONFIG_SECURITY_PATH). */
#define MR_ARGS_LSM_USERNS 1 /* mr_lsm_userns */
#define MR_ARGS_LSM_SETID 2  /* mr_lsm_chmod, mr_lsm_mknod, mr_lsm_setxattr */
__weak const volatile __u32 cfg_args_lsm = 0;

/* the namespace type of an nsfs inode: ns_common.ns_type since 6.18, ops->type before */
struct ns_common___v618 {
	__u32 ns_type;
} __attribute__((preserve_access_index));

struct proc_ns_operations___old {
	int type;
} __attribute__((preserve_access_index));

static const char CAPS_XATTR[] = "security.capability";

/* n (read with bpf_probe_read_*_str, r = its return) is "security.capability" */
static __always_inline int is_caps_xattr(const char *n, long r)
{
	if (r != sizeof(CAPS_XATTR))
		return 0;
#pragma unroll
	for (int i = 0; i < sizeof(CAPS_XATTR); i++)
		if (n[i] != CAPS_XATTR[i])
			return 0;
	return 1;
}

static __always_inline __u64 ns_slots(struct mr_pconf *c, __u64 flags)
{
	__u64 s = 0;

	if (flags & MR_CLONE_NEWUSER)
		s |= c->ns[MR_NS_USER];
	if (flags & MR_CLONE_NEWNS)
		s |= c->ns[MR_NS_MNT];
	if (flags & MR_CLONE_NEWNET)
		s |= c->ns[MR_NS_NET];
	if (flags & MR_CLONE_NEWPID)
		s |= c->ns[MR_NS_PID];
	if (flags & MR_CLONE_NEWIPC)
		s |= c->ns[MR_NS_IPC];
	if (flags & MR_CLONE_NEWUTS)
		s |= c->ns[MR_NS_UTS];
	if (flags & MR_CLONE_NEWCGROUP)
		s |= c->ns[MR_NS_CGROUP];
	if (flags & MR_CLONE_NEWTIME)
		s |= c->ns[MR_NS_TIME];
	return s;
}

static __always_inline __u64 setid_slots(struct mr_pconf *c, __u32 bits)
{
	__u64 s = 0;

	if (bits & (1 << MR_SETID_UID))
		s |= c->setid[MR_SETID_UID];
	if (bits & (1 << MR_SETID_GID))
		s |= c->setid[MR_SETID_GID];
	if (bits & (1 << MR_SETID_CAPS))
		s |= c->setid[MR_SETID_CAPS];
	return s;
}

/* What a mode asks for: setuid, and setgid where it acts (with group execute; without,
 * the bit grants nothing on exec). */
static __always_inline __u32 mode_bits(__u64 mode)
{
	__u32 b = 0;

	if (mode & MR_S_ISUID)
		b |= 1 << MR_SETID_UID;
	if ((mode & (MR_S_ISGID | MR_S_IXGRP)) == (MR_S_ISGID | MR_S_IXGRP))
		b |= 1 << MR_SETID_GID;
	return b;
}

/* The namespace types setns(fd, 0) enters: resolved from an nsfs fd, else "any". */
static __always_inline __u64 setns_flags(__u64 fd, __u64 nstype)
{
	struct file *f;
	struct inode *inode;
	struct ns_common *ns;
	const struct proc_ns_operations___old *ops;
	struct ns_common___v618 *n;

	if (nstype)
		return nstype; /* one type (nsfs fd) or a set of them (pidfd) */
	f = task_fd_file((struct task_struct *)bpf_get_current_task(), fd);
	if (!f)
		return MR_CLONE_NS_ALL;
	inode = BPF_CORE_READ(f, f_inode);
	if (BPF_CORE_READ(inode, i_sb, s_magic) != MR_NSFS_MAGIC)
		return MR_CLONE_NS_ALL;
	ns = BPF_CORE_READ(inode, i_private);
	n = (struct ns_common___v618 *)ns;
	if (bpf_core_field_exists(n->ns_type))
		return BPF_CORE_READ(n, ns_type);
	ops = (const struct proc_ns_operations___old *)BPF_CORE_READ(ns, ops);
	return BPF_CORE_READ(ops, type);
}

/* The syscall the current task is in (for the LSM hooks' records). */
static __always_inline __u32 current_nr(void)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	return BPF_CORE_READ(regs, orig_ax);
}

/* Namespace rule: flags = the CLONE_NEW* bits the call asks for. */
static __always_inline int ns_check(struct mr_pconf *c, __u32 nr, __u64 flags, int lsm)
{
	struct mr_pheap_buf *h;
	struct mr_enforce *ev;
	__u64 cgid, scope, hit, enf;
	int pending;

	flags &= MR_CLONE_NS_ALL;
	if (!flags)
		return 0;
	cgid = bpf_get_current_cgroup_id();
	scope = scope_of(c, cgid, &pending);
	hit = ns_slots(c, flags) & scope;
	if (!hit || runtime_setup(cgid, pending))
		return 0;
	enf = hit & c->enforce;
	if (enf && !lsm)
		bpf_send_signal(SIGKILL);
	h = pheap();
	if (!h)
		return enf ? -EPERM : 0;
	ev = (struct mr_enforce *)h->rec;
	enf_init(ev, MR_EK_NS, action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED), hit, enf);
	ev->arg = nr;
	put_u64(ev->addr, flags);
	hdr_init(&ev->hdr, MR_OP_ENFORCE, sizeof(*ev));
	emit_now(ev, sizeof(*ev));
	return enf ? -EPERM : 0;
}

/* Setid rule. bits: MR_SETID_* asked for; the object is file f (by descriptor, or an LSM
 * hook's path), or upath relative to dfd (AT_FDCWD: the working directory). kname: the
 * object's name as a kernel string when no path is known (inode_setxattr). */
static __always_inline int setid_check(struct mr_pconf *c, __u32 nr, __u32 bits, __u64 mode,
				       const struct path *fpath, int dfd, const char *upath,
				       const char *kname, int lsm)
{
	struct mr_pheap_buf *h = pheap();
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct mr_enforce *ev;
	const struct path *dir = 0;
	struct file *df;
	__u64 cgid, scope, hit, enf;
	__u32 off = 0, trunc = 0, len1 = 0, len2 = 0;
	int pending;
	long r;

	if (!h || !bits)
		return 0;
	cgid = bpf_get_current_cgroup_id();
	scope = scope_of(c, cgid, &pending);
	hit = setid_slots(c, bits) & scope;
	if (!hit)
		return 0;
	if (upath) {
		r = bpf_probe_read_user_str(h->k2.path, MR_PATH_KEY, upath);
		if (r <= 1)
			return 0; /* no such file: the call fails */
		len2 = r - 1;
		if (h->k2.path[0] != '/') {
			if (dfd == MR_AT_FDCWD) {
				struct fs_struct *fs = BPF_CORE_READ(t, fs);

				dir = __builtin_preserve_access_index(&fs->pwd);
			} else {
				df = task_fd_file(t, dfd);
				if (!df)
					return 0; /* EBADF */
				dir = __builtin_preserve_access_index(&df->f_path);
			}
		}
	} else {
		if (kname) {
			r = bpf_probe_read_kernel_str(h->k2.path, MR_PATH_KEY, kname);
			len2 = r > 1 ? r - 1 : 0;
		}
		dir = fpath;
	}
	enf = hit & c->enforce;
	if (enf && !lsm)
		bpf_send_signal(SIGKILL);
	ev = (struct mr_enforce *)h->rec;
	enf_init(ev, MR_EK_SETID, action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED), hit, enf);
	ev->arg = nr;
	ev->family = bits;
	put_u64(ev->addr, mode);
	if (dir) {
		off = path_resolve(dir, h->pbuf, &trunc);
		len1 = path_copy(ev->data, h->pbuf, off);
	}
	emit_paths(h, ev, len1, len2);
	return enf ? -EPERM : 0;
}

/* A descriptor's file, if it is a regular file (setid on a directory grants nothing). */
static __always_inline struct file *reg_file(__u64 fd)
{
	struct file *f = task_fd_file((struct task_struct *)bpf_get_current_task(), fd);

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & MR_S_IFMT) != MR_S_IFREG)
		return 0;
	return f;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(mr_enf_args, struct pt_regs *regs, long id)
{
	struct mr_pconf *c;
	__u64 a0, a1, a2, a3, fl = 0, mode = 0, dfd = MR_AT_FDCWD, type;
	const char *upath = 0, *uname = 0;
	const struct path *fpath = 0;
	char name[sizeof(CAPS_XATTR)] = {};
	struct open_how how = {};
	struct file *f;
	int by_fd = 0;
	__u32 bits;
	char first = 0;

	switch (id) {
	case NR_unshare: case NR_clone: case NR_clone3: case NR_setns:
	case NR_chmod: case NR_fchmod: case NR_fchmodat: case NR_fchmodat2:
	case NR_open: case NR_creat: case NR_openat: case NR_openat2:
	case NR_mknod: case NR_mknodat:
	case NR_setxattr: case NR_lsetxattr: case NR_fsetxattr: case NR_setxattrat:
		break;
	default:
		return 0;
	}
	c = pconf();
	if (!c || !(c->active & c->args))
		return 0;
	a0 = BPF_CORE_READ(regs, di);
	a1 = BPF_CORE_READ(regs, si);
	a2 = BPF_CORE_READ(regs, dx);
	a3 = BPF_CORE_READ(regs, r10);
	/* LSM tier: lsm/userns_create refuses user namespaces before they exist */
	fl = (cfg_args_lsm & MR_ARGS_LSM_USERNS) ? ~(__u64)MR_CLONE_NEWUSER : ~(__u64)0;
	switch (id) {
	case NR_unshare:
		return ns_check(c, id, a0 & fl, 0);
	case NR_clone:
		return ns_check(c, id, a0 & ~(__u64)MR_CSIGNAL & fl, 0);
	case NR_clone3: {
		__u64 flags = 0;

		bpf_probe_read_user(&flags, sizeof(flags), (void *)a0);
		return ns_check(c, id, flags & fl, 0);
	}
	case NR_setns:
		return ns_check(c, id, setns_flags(a0, a1), 0);
	}
	if (cfg_args_lsm & MR_ARGS_LSM_SETID) /* path_chmod, path_mknod, inode_setxattr do */
		return 0;
	/* one call of setid_check below (it walks a path: the verifier checks each call) */
	switch (id) {
	case NR_chmod:
		mode = a1, upath = (const char *)a0;
		break;
	case NR_fchmod:
		mode = a1, dfd = a0, by_fd = 1;
		break;
	case NR_fchmodat:
		mode = a2, dfd = a0, upath = (const char *)a1;
		break;
	case NR_fchmodat2:
		mode = a2, dfd = a0, upath = (const char *)a1, by_fd = a3 & MR_AT_EMPTY_PATH;
		break;
	case NR_open:
		if (!(a1 & (MR_O_CREAT | MR_O_TMPFILE)))
			return 0;
		mode = a2, upath = (const char *)a0;
		break;
	case NR_creat:
	case NR_mknod:
		mode = a1, upath = (const char *)a0;
		break;
	case NR_openat:
		if (!(a2 & (MR_O_CREAT | MR_O_TMPFILE)))
			return 0;
		mode = a3, dfd = a0, upath = (const char *)a1;
		break;
	case NR_openat2:
		bpf_probe_read_user(&how, sizeof(how), (void *)a2);
		if (!(how.flags & (MR_O_CREAT | MR_O_TMPFILE)))
			return 0;
		mode = how.mode, dfd = a0, upath = (const char *)a1;
		break;
	case NR_mknodat:
		mode = a2, dfd = a0, upath = (const char *)a1;
		break;
	case NR_setxattr:
	case NR_lsetxattr:
		uname = (const char *)a1, upath = (const char *)a0;
		break;
	case NR_fsetxattr:
		uname = (const char *)a1, dfd = a0, by_fd = 1;
		break;
	case NR_setxattrat:
		uname = (const char *)a3, dfd = a0, upath = (const char *)a1;
		by_fd = a2 & MR_AT_EMPTY_PATH;
		break;
	default:
		return 0;
	}
	if (uname) {
		if (!(c->setid[MR_SETID_CAPS] & c->active) ||
		    !is_caps_xattr(name, bpf_probe_read_user_str(name, sizeof(name), uname)))
			return 0;
		bits = 1 << MR_SETID_CAPS, mode = 0;
	} else {
		type = mode & MR_S_IFMT; /* mknod: only regular files; chmod, open: 0 */
		if (type && type != MR_S_IFREG)
			return 0;
		bits = mode_bits(mode);
	}
	if (!bits)
		return 0;
	if (upath && by_fd) { /* AT_EMPTY_PATH: "" means the descriptor itself */
		bpf_probe_read_user(&first, 1, upath);
		if (first)
			by_fd = 0;
	}
	if (by_fd) {
		f = reg_file(dfd);
		if (!f)
			return 0;
		fpath = __builtin_preserve_access_index(&f->f_path);
		upath = 0;
	}
	return setid_check(c, id, bits, mode, fpath, dfd, upath, 0, 0);
}

SEC("lsm/userns_create")
int BPF_PROG(mr_lsm_userns, const struct cred *cred, int ret)
{
	struct mr_pconf *c = pconf();

	if (ret || !c || !(c->active & c->args))
		return ret;
	return ns_check(c, current_nr(), MR_CLONE_NEWUSER, 1);
}

SEC("lsm/path_chmod")
int BPF_PROG(mr_lsm_chmod, const struct path *path, umode_t mode, int ret)
{
	struct mr_pconf *c = pconf();
	__u32 bits = mode_bits(mode);

	if (ret || !bits || !c || !(c->active & c->args))
		return ret;
	if ((BPF_CORE_READ(path, dentry, d_inode, i_mode) & MR_S_IFMT) != MR_S_IFREG)
		return 0;
	return setid_check(c, current_nr(), bits, mode, path, 0, 0, 0, 1);
}

SEC("lsm/path_mknod")
int BPF_PROG(mr_lsm_mknod, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev, int ret)
{
	struct mr_pconf *c = pconf();
	__u32 bits = mode_bits(mode);
	__u64 type = mode & MR_S_IFMT;

	if (ret || !bits || (type && type != MR_S_IFREG) || !c || !(c->active & c->args))
		return ret;
	return setid_check(c, current_nr(), bits, mode, dir, 0, 0,
			   (const char *)BPF_CORE_READ(dentry, d_name.name), 1);
}

SEC("lsm/inode_setxattr")
int BPF_PROG(mr_lsm_setxattr, void *idmap, struct dentry *dentry, const char *name,
	     const void *value, size_t size, int flags, int ret)
{
	struct mr_pconf *c = pconf();
	char n[sizeof(CAPS_XATTR)] = {};

	if (ret || !c || !(c->active & c->args & c->setid[MR_SETID_CAPS]))
		return ret;
	if (!is_caps_xattr(n, bpf_probe_read_kernel_str(n, sizeof(n), name)))
		return 0;
	return setid_check(c, current_nr(), 1 << MR_SETID_CAPS, 0, 0, 0, 0,
			   (const char *)BPF_CORE_READ(dentry, d_name.name), 1);
}
