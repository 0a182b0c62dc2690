// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Syscalls the detection rules (agent/detect) look at, reported with their result so a
 * failed attempt (EPERM in an unprivileged container) counts: sys_enter saves the
 * arguments (mr_sys_args) when the call is worth reporting, sys_exit writes one mr_sysobs.
 *
 * Always reported: ptrace, mount, umount2, unshare, setns, init_module, finit_module,
 * memfd_create. Filtered in the kernel: chmod family only with setuid/setgid bits;
 * setxattr family only for security.capability; link/symlink only to a watched target
 * (mr_watch, as written); unlink/rename only of a watched path; socket only AF_PACKET or
 * inet SOCK_RAW; dup2/dup3 only onto fd 0-2 of an inet socket; connect only to a unix
 * socket whose path is watched (runtime sockets); open/openat only for writing a file
 * named release_agent. At exec (sched_process_exec):
 * a record only when fd 0, 1 or 2 is an inet socket or the binary is on an overlayfs
 * upper layer / tmpfs (not in the image). Observation only: nothing is denied here.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/files.h"
#include "../maps/sysobs.h"
#include "../lib/task.h"
#include "../lib/path.h"

#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define SOCK_RAW 3
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_ISUID 04000
#define S_ISGID 02000
#define OVL_MAGIC 0x794c7630
#define TMPFS_MAG 0x01021994
#define RAMFS_MAG 0x858458f6

#define NR_OPEN 2
#define NR_DUP2 33
#define NR_CONNECT 42
#define NR_SOCKET 41
#define NR_EXECVE 59
#define NR_RENAME 82
#define NR_LINK 86
#define NR_UNLINK 87
#define NR_SYMLINK 88
#define NR_CHMOD 90
#define NR_FCHMOD 91
#define NR_PTRACE 101
#define NR_MOUNT 165
#define NR_UMOUNT2 166
#define NR_INIT_MODULE 175
#define NR_SETXATTR 188
#define NR_LSETXATTR 189
#define NR_FSETXATTR 190
#define NR_OPENAT 257
#define NR_UNLINKAT 263
#define NR_RENAMEAT 264
#define NR_LINKAT 265
#define NR_SYMLINKAT 266
#define NR_FCHMODAT 268
#define NR_UNSHARE 272
#define NR_DUP3 292
#define NR_SETNS 308
#define NR_FINIT_MODULE 313
#define NR_RENAMEAT2 316
#define NR_MEMFD_CREATE 319
#define NR_FCHMODAT2 452

#define STR_MAX 512
#define DATA_MASK 8191

/* ---- helpers ------------------------------------------------------------------------ */

static __always_inline int watched(const char *upath)
{
	__u32 zero = 0;
	struct mr_watch_key *k = bpf_map_lookup_elem(&mr_wkey, &zero);
	__u32 *v;
	long r;

	if (!k)
		return 0;
	r = bpf_probe_read_user_str(k->path, sizeof(k->path), upath);
	if (r <= 1 || k->path[0] != '/')
		return 0;
	k->prefixlen = (r - 1) * 8;
	v = bpf_map_lookup_elem(&mr_watch, k);
	return v && (*v & 1);
}

/* 1 when f is an AF_INET/AF_INET6 socket; its peer goes into the record. */
static __always_inline int inet_peer(struct file *f, struct mr_sysobs *ev)
{
	struct socket *sock;
	struct sock *sk;
	__u16 fam;

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	ev->family = fam;
	ev->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (fam == AF_INET) {
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(ev->addr, &d, 4);
	} else {
		BPF_CORE_READ_INTO(&ev->addr, sk, __sk_common.skc_v6_daddr);
	}
	return 1;
}

static __always_inline void obs_init(struct mr_sysobs *ev, __u32 nr, long ret)
{
	ev->ret = ret;
	ev->arg0 = ev->arg1 = ev->arg2 = ev->arg3 = 0;
	ev->nr = nr;
	ev->flags = 0;
	ev->family = 0;
	ev->port = 0;
	ev->path_len = ev->path2_len = ev->path3_len = 0;
	__builtin_memset(ev->addr, 0, sizeof(ev->addr));
}

/* User string at data[*pos]; returns its length (no NUL). */
static __always_inline __u16 put_ustr(struct mr_sysobs *ev, __u32 *pos, __u64 uptr)
{
	long r;
	__u32 n;

	if (!uptr)
		return 0;
	r = bpf_probe_read_user_str(&ev->data[*pos & DATA_MASK], STR_MAX, (void *)uptr);
	n = r > 0 ? (r - 1) & (STR_MAX - 1) : 0;
	*pos += n;
	return n;
}

/* The path of struct file f at data[*pos] (must be first: pos 0). */
static __always_inline __u16 put_file(struct mr_sysobs *ev, __u32 *pos, char *pbuf,
				      struct file *f)
{
	__u32 trunc = 0, off, n;

	if (!f)
		return 0;
	off = path_resolve(__builtin_preserve_access_index(&f->f_path), pbuf, &trunc);
	if (trunc)
		ev->flags |= MR_SO_PATH_TRUNC;
	ev->flags |= MR_SO_PATH_FD;
	n = path_copy(&ev->data[*pos & DATA_MASK], pbuf, off);
	*pos += n;
	return n;
}

static __always_inline void obs_emit(struct mr_sysobs *ev, struct task_struct *task, __u32 pos)
{
	__u32 n;

	proc_fill(&ev->proc, task);
	n = sizeof(*ev) + (pos & DATA_MASK);
	hdr_init(&ev->hdr, MR_OP_SYSCALL, n);
	if (n > sizeof(*ev) + DATA_MASK)
		return;
	emit(ev, n);
}

/* connect(2) to a unix socket whose path is watched (container runtime sockets). */
static __always_inline int unix_watched(__u64 uaddr, __u64 len)
{
	__u16 fam = 0;

	if (len < 3 || bpf_probe_read_user(&fam, sizeof(fam), (void *)uaddr) || fam != 1)
		return 0;
	return watched((const char *)(uaddr + 2));
}

/* An open for writing of a file named release_agent (any cgroup v1 mount, wherever it
 * was mounted: the classic escape mounts one under /tmp), as written. */
static __always_inline int release_agent(__u64 upath, __u64 flags)
{
	__u32 zero = 0;
	struct mr_watch_key *k;
	const char *p;
	long r;
	__u32 n;

	if (!(flags & 3))
		return 0;
	k = bpf_map_lookup_elem(&mr_wkey, &zero);
	if (!k)
		return 0;
	r = bpf_probe_read_user_str(k->path, sizeof(k->path), (void *)upath);
	if (r < 14)
		return 0;
	n = r - 1; /* "release_agent" is 13 bytes */
	p = k->path;
	/* r e l e a s e _ a g e n t: 13 characters ending at p[n - 1] */
	return p[(n - 13) & 255] == 'r' && p[(n - 12) & 255] == 'e' && p[(n - 11) & 255] == 'l' &&
	       p[(n - 7) & 255] == 'e' && p[(n - 6) & 255] == '_' && p[(n - 5) & 255] == 'a' &&
	       p[(n - 4) & 255] == 'g' && p[(n - 1) & 255] == 't' &&
	       (n == 13 || p[(n - 14) & 255] == '/');
}

/* ---- sys_enter: decide and remember ------------------------------------------------- */

static __always_inline int save(__u32 nr, struct trace_event_raw_sys_enter *ctx)
{
	struct mr_sys_inflight in = {};
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (is_self())
		return 0;
	in.nr = nr;
	/* a probe read, not ctx loads: a tracepoint's record holds only its syscall's own
	 * arguments and attaching fails (EACCES) if the program reads past them; the
	 * arguments a syscall does not have are garbage and never used */
	bpf_probe_read_kernel(in.args, 4 * sizeof(__u64), (void *)ctx->args);
	bpf_map_update_elem(&mr_sys_args, &tid, &in, BPF_ANY);
	return 0;
}

static __always_inline int is_cap_xattr(__u64 uname)
{
	char n[20] = {};

	if (bpf_probe_read_user_str(n, sizeof(n), (void *)uname) != 20)
		return 0; /* "security.capability" is 19 bytes + NUL */
	return n[0] == 's' && n[8] == '.' && n[9] == 'c' && n[10] == 'a' && n[11] == 'p' &&
	       n[18] == 'y' && n[1] == 'e' && n[2] == 'c';
}

#define ENTER_ALWAYS(name, NR)                                                        \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                  \
	int mr_so_in_##name(struct trace_event_raw_sys_enter *ctx) { return save(NR, ctx); }

ENTER_ALWAYS(ptrace, NR_PTRACE)
ENTER_ALWAYS(mount, NR_MOUNT)
ENTER_ALWAYS(umount, NR_UMOUNT2)
ENTER_ALWAYS(unshare, NR_UNSHARE)
ENTER_ALWAYS(setns, NR_SETNS)
ENTER_ALWAYS(memfd_create, NR_MEMFD_CREATE)

#define ENTER_IF(name, NR, cond)                                                      \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                  \
	int mr_so_in_##name(struct trace_event_raw_sys_enter *ctx)                    \
	{                                                                             \
		if (!(cond))                                                          \
			return 0;                                                     \
		return save(NR, ctx);                                                 \
	}

#define A(i) (ctx->args[i])
ENTER_IF(chmod, NR_CHMOD, A(1) & (S_ISUID | S_ISGID))
ENTER_IF(fchmod, NR_FCHMOD, A(1) & (S_ISUID | S_ISGID))
ENTER_IF(fchmodat, NR_FCHMODAT, A(2) & (S_ISUID | S_ISGID))
ENTER_IF(fchmodat2, NR_FCHMODAT2, A(2) & (S_ISUID | S_ISGID))
ENTER_IF(setxattr, NR_SETXATTR, is_cap_xattr(A(1)))
ENTER_IF(lsetxattr, NR_LSETXATTR, is_cap_xattr(A(1)))
ENTER_IF(fsetxattr, NR_FSETXATTR, is_cap_xattr(A(1)))
ENTER_IF(link, NR_LINK, watched((const char *)A(0)))
ENTER_IF(linkat, NR_LINKAT, watched((const char *)A(1)))
ENTER_IF(symlink, NR_SYMLINK, watched((const char *)A(0)))
ENTER_IF(symlinkat, NR_SYMLINKAT, watched((const char *)A(0)))
ENTER_IF(unlink, NR_UNLINK, watched((const char *)A(0)))
ENTER_IF(unlinkat, NR_UNLINKAT, watched((const char *)A(1)))
ENTER_IF(rename, NR_RENAME, watched((const char *)A(0)))
ENTER_IF(renameat, NR_RENAMEAT, watched((const char *)A(1)))
ENTER_IF(renameat2, NR_RENAMEAT2, watched((const char *)A(1)))
ENTER_IF(socket, NR_SOCKET, A(0) == AF_PACKET ||
	 ((A(0) == AF_INET || A(0) == AF_INET6) && (A(1) & 0xf) == SOCK_RAW))
ENTER_IF(dup2, NR_DUP2, A(1) <= 2)
ENTER_IF(connect, NR_CONNECT, unix_watched(A(1), A(2)))
ENTER_IF(openat, NR_OPENAT, release_agent(A(1), A(2)))
ENTER_IF(open, NR_OPEN, release_agent(A(0), A(1)))
ENTER_IF(dup3, NR_DUP3, A(1) <= 2)

/* ---- sys_exit: report with the result ------------------------------------------------ */

static __always_inline int on_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), pos = 0, nr;
	struct mr_sys_inflight *in = bpf_map_lookup_elem(&mr_sys_args, &tid);
	struct task_struct *task;
	struct mr_sysobs *ev;
	char *pbuf;
	__u64 *a;

	if (!in)
		return 0;
	ev = heap_slot(0);
	pbuf = heap_slot(1);
	if (!ev || !pbuf)
		goto out;
	nr = in->nr;
	a = in->args;
	task = (struct task_struct *)bpf_get_current_task();
	obs_init(ev, nr, ret);
	ev->arg0 = a[0];
	ev->arg1 = a[1];
	ev->arg2 = a[2];
	ev->arg3 = a[3];
	switch (nr) {
	case NR_DUP2:
	case NR_DUP3:
		/* only a socket landing on stdio is interesting */
		if (ret < 0 || !inet_peer(task_fd_file(task, a[1]), ev))
			goto out;
		ev->flags |= (1 << (a[1] & 3)) & 7;
		break;
	case NR_MOUNT: /* target | source | fstype */
		ev->path_len = put_ustr(ev, &pos, a[1]);
		ev->path2_len = put_ustr(ev, &pos, a[0]);
		ev->path3_len = put_ustr(ev, &pos, a[2]);
		break;
	case NR_UMOUNT2:
	case NR_CHMOD:
	case NR_UNLINK:
	case NR_MEMFD_CREATE: /* memfd: its name */
		ev->path_len = put_ustr(ev, &pos, a[0]);
		break;
	case NR_CONNECT: /* the socket path */
		ev->path_len = put_ustr(ev, &pos, a[1] + 2);
		break;
	case NR_OPEN:
		ev->path_len = put_ustr(ev, &pos, a[0]);
		break;
	case NR_OPENAT:
	case NR_FCHMODAT:
	case NR_FCHMODAT2:
	case NR_UNLINKAT:
		ev->path_len = put_ustr(ev, &pos, a[1]);
		break;
	case NR_FCHMOD:
	case NR_FINIT_MODULE:
		ev->path_len = put_file(ev, &pos, pbuf, task_fd_file(task, a[0]));
		break;
	case NR_FSETXATTR: /* file | attribute name */
		ev->path_len = put_file(ev, &pos, pbuf, task_fd_file(task, a[0]));
		ev->path2_len = put_ustr(ev, &pos, a[1]);
		break;
	case NR_SETXATTR:
	case NR_LSETXATTR:
		ev->path_len = put_ustr(ev, &pos, a[0]);
		ev->path2_len = put_ustr(ev, &pos, a[1]);
		break;
	case NR_LINK: /* target | new name */
	case NR_SYMLINK:
	case NR_RENAME: /* old | new */
		ev->path_len = put_ustr(ev, &pos, a[0]);
		ev->path2_len = put_ustr(ev, &pos, a[1]);
		break;
	case NR_SYMLINKAT:
		ev->path_len = put_ustr(ev, &pos, a[0]);
		ev->path2_len = put_ustr(ev, &pos, a[2]);
		break;
	case NR_LINKAT:
	case NR_RENAMEAT:
	case NR_RENAMEAT2:
		ev->path_len = put_ustr(ev, &pos, a[1]);
		ev->path2_len = put_ustr(ev, &pos, a[3]);
		break;
	default: /* ptrace, unshare, setns, init_module, socket: arguments only */
		break;
	}
	obs_emit(ev, task, pos);
out:
	bpf_map_delete_elem(&mr_sys_args, &tid);
	return 0;
}

#define EXIT(name)                                                                    \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                   \
	int mr_so_out_##name(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx->ret); }

EXIT(ptrace)
EXIT(mount)
EXIT(umount)
EXIT(unshare)
EXIT(setns)
EXIT(memfd_create)
EXIT(chmod)
EXIT(fchmod)
EXIT(fchmodat)
EXIT(fchmodat2)
EXIT(setxattr)
EXIT(lsetxattr)
EXIT(fsetxattr)
EXIT(link)
EXIT(linkat)
EXIT(symlink)
EXIT(symlinkat)
EXIT(unlink)
EXIT(unlinkat)
EXIT(rename)
EXIT(renameat)
EXIT(renameat2)
EXIT(socket)
EXIT(dup2)
EXIT(dup3)
EXIT(connect)
EXIT(openat)
EXIT(open)

/* ---- exec: stdio sockets (reverse shells) and binaries not in the image --------------- */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(mr_so_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct mr_sysobs *ev;
	struct file *file;
	struct inode *inode;
	struct ovl_inode *oi;
	unsigned long magic;
	char *pbuf;
	__u32 pos = 0;
	__u16 flags = 0;

	if (is_self())
		return 0;
	ev = heap_slot(0);
	pbuf = heap_slot(1);
	if (!ev || !pbuf)
		return 0;
	obs_init(ev, NR_EXECVE, 0);
	if (inet_peer(task_fd_file(task, 0), ev))
		flags |= MR_SO_STDIN_SOCK;
	if (inet_peer(task_fd_file(task, 1), ev))
		flags |= MR_SO_STDOUT_SOCK;
	if (inet_peer(task_fd_file(task, 2), ev))
		flags |= MR_SO_STDERR_SOCK;
	file = BPF_CORE_READ(bprm, file);
	inode = BPF_CORE_READ(file, f_inode);
	magic = BPF_CORE_READ(inode, i_sb, s_magic);
	if (magic == TMPFS_MAG || magic == RAMFS_MAG) {
		flags |= MR_SO_TMPFS;
	} else if (magic == OVL_MAGIC && bpf_core_type_exists(struct ovl_inode)) {
		/* overlay.ko not loaded when the agent started (Debian): type unknown */
		oi = container_of(inode, struct ovl_inode, vfs_inode);
		if (BPF_CORE_READ(oi, __upperdentry))
			flags |= MR_SO_UPPER;
	}
	if (!flags)
		return 0;
	ev->path_len = put_file(ev, &pos, pbuf, file);
	ev->flags |= flags;
	obs_emit(ev, task, pos);
	return 0;
}

/* ---- kernel modules ------------------------------------------------------------------
 * A kernel built without module support has no init_module / finit_module tracepoints
 * (the calls fail with ENOSYS, still an attempt). The loader keeps the pair that works:
 * the syscall tracepoints where they exist (agent/detect/programs.py), else one
 * raw_tracepoint/sys_exit filtering on the two numbers (one compare per syscall). */

ENTER_ALWAYS(init_module, NR_INIT_MODULE)
ENTER_ALWAYS(finit_module, NR_FINIT_MODULE)
EXIT(init_module)
EXIT(finit_module)

SEC("raw_tracepoint/sys_exit")
int mr_so_raw_module(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	__u32 nr = BPF_CORE_READ(regs, orig_ax), tid;
	struct mr_sys_inflight in = {};

	if (nr != NR_INIT_MODULE && nr != NR_FINIT_MODULE)
		return 0;
	if (is_self())
		return 0;
	in.nr = nr;
	in.args[0] = BPF_CORE_READ(regs, di);
	in.args[1] = BPF_CORE_READ(regs, si);
	in.args[2] = BPF_CORE_READ(regs, dx);
	in.args[3] = BPF_CORE_READ(regs, r10);
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&mr_sys_args, &tid, &in, BPF_ANY);
	return on_exit((long)ctx->args[1]);
}
