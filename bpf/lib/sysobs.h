/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Syscall observation records (struct mr_sysobs) for the detection rules: the arguments a
 * sys_enter program decided to keep go into mr_sys_args (save), sysobs_exit writes the
 * record with the result. Shared by progs/syscalls_obs.bpf.c and progs/file.bpf.c (which
 * spots writes to release_agent on the path it already read for the watch filter). */
#pragma once

#include "common.h"
#include "../maps/scratch.h"
#include "../maps/files.h"
#include "../maps/sysobs.h"
#include "task.h"
#include "path.h"

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
#define NR_UTIMENSAT 280
#define NR_DUP3 292
#define NR_SETNS 308
#define NR_PROCESS_VM_READV 310
#define NR_PROCESS_VM_WRITEV 311
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
	emit_now(ev, n);
}

/* connect(2) to a unix socket whose path is watched (container runtime sockets). */
static __always_inline int unix_watched(__u64 uaddr, __u64 len)
{
	__u16 fam = 0;

	if (len < 3 || bpf_probe_read_user(&fam, sizeof(fam), (void *)uaddr) || fam != 1)
		return 0;
	return watched((const char *)(uaddr + 2));
}

/* A path as written naming a file called release_agent (any cgroup v1 mount, wherever it
 * was mounted: the classic escape mounts one under /tmp). p holds n characters. */
static __always_inline int is_release_agent(const char *p, __u32 n)
{
	if (n < 13) /* "release_agent" is 13 bytes */
		return 0;
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

/* ---- sys_exit: report with the result ------------------------------------------------ */

static __always_inline int sysobs_exit(long ret)
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
	case NR_UTIMENSAT:
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
	default: /* ptrace, unshare, setns, init_module, socket, process_vm_*: arguments only */
		break;
	}
	obs_emit(ev, task, pos);
out:
	bpf_map_delete_elem(&mr_sys_args, &tid);
	return 0;
}
