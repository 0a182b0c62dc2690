// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * File opens of watched paths (mr_watch), filtered in the kernel so `find /` stays here.
 *
 * sys_enter: absolute path -> LPM lookup on the string as written (cheap; a miss ends it
 * there); relative path -> remembered, resolved at exit. sys_exit: on success the path is
 * resolved from the new fd's dentry (symlinks and `..` resolved, as the task sees it) and,
 * for relative opens, looked up then; a failed open of a watched absolute path is reported
 * with the path as written and the errno. /proc/<pid>/mem is matched by its own rule.
 * Not seen: opens through io_uring (no syscall) and absolute paths whose watched target
 * is reached only through a symlink outside the watched set.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/files.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/sysobs.h"

#define PROC_SUPER_MAGIC 0x9fa0

/* Watched when the longest stored prefix has the report bit (0 entries are exceptions). */
static __always_inline int watch_lookup(struct mr_watch_key *k, __u32 len)
{
	__u32 *v;

	k->prefixlen = len * 8;
	v = bpf_map_lookup_elem(&mr_watch, k);
	return v && (*v & 1);
}

/* "/proc/<something>/mem" as written */
static __always_inline int is_proc_mem(const char *p, __u32 len)
{
	if (!cfg_watch_proc_mem || len < 10 || len >= MR_WATCH_LEN)
		return 0;
	return p[0] == '/' && p[1] == 'p' && p[2] == 'r' && p[3] == 'o' && p[4] == 'c' &&
	       p[5] == '/' && p[(len - 4) & (MR_WATCH_LEN - 1)] == '/' &&
	       p[(len - 3) & (MR_WATCH_LEN - 1)] == 'm' && p[(len - 2) & (MR_WATCH_LEN - 1)] == 'e' &&
	       p[(len - 1) & (MR_WATCH_LEN - 1)] == 'm';
}

/* nr: NR_OPEN / NR_OPENAT when a write to release_agent is a detection record (sysobs.h),
 * 0 for the other open calls. */
static __always_inline int on_enter(struct trace_event_raw_sys_enter *ctx, const char *fname,
				    __u32 flags, __u32 nr)
{
	__u32 zero = 0, tid;
	struct mr_watch_key *k;
	struct mr_open_inflight in = {};
	long r;

	if (is_self())
		return 0;
	k = bpf_map_lookup_elem(&mr_wkey, &zero);
	if (!k)
		return 0;
	r = bpf_probe_read_user_str(k->path, sizeof(k->path), fname);
	if (r <= 1)
		return 0;
	if (nr && (flags & 3) && is_release_agent(k->path, r - 1)) {
		save(nr, ctx);
		in.matched |= MR_OI_SYSOBS;
	}
	if (k->path[0] == '/') {
		if (watch_lookup(k, r - 1) || is_proc_mem(k->path, r - 1))
			in.matched |= MR_OI_MATCHED;
		else if (!in.matched)
			return 0;
	} else {
		in.matched |= MR_OI_RESOLVE;
	}
	in.fname = (__u64)fname;
	in.flags = flags;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&mr_open_args, &tid, &in, BPF_ANY);
	return 0;
}

static __always_inline int file_is_proc_mem(struct file *f)
{
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	char n[4] = {};

	if (!cfg_watch_proc_mem || BPF_CORE_READ(d, d_sb, s_magic) != PROC_SUPER_MAGIC ||
	    BPF_CORE_READ(d, d_name.len) != 3)
		return 0;
	bpf_probe_read_kernel(n, 3, name);
	return n[0] == 'm' && n[1] == 'e' && n[2] == 'm';
}

static __always_inline int on_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), trunc = 0, priv = 0, off, len, zero = 0;
	struct mr_open_inflight *in = bpf_map_lookup_elem(&mr_open_args, &tid);
	struct mr_open *ev;
	struct mr_watch_key *k;
	struct task_struct *task;
	struct file *f;
	char *pbuf;
	long r;

	if (!in)
		return 0;
	if (in->matched & MR_OI_SYSOBS)
		sysobs_exit(ret);
	if (!(in->matched & (MR_OI_MATCHED | MR_OI_RESOLVE)))
		goto out;
	ev = heap_slot(0);
	pbuf = heap_slot(1);
	k = bpf_map_lookup_elem(&mr_wkey, &zero);
	if (!ev || !pbuf || !k)
		goto out;

	ev->flags = in->flags;
	ev->ret = ret;
	ev->pflags = 0;
	task = (struct task_struct *)bpf_get_current_task();
	if (ret >= 0) {
		f = task_fd_file(task, ret);
		if (!f)
			goto out;
		off = path_resolve_root(__builtin_preserve_access_index(&f->f_path), pbuf, &trunc,
					&priv);
		if (priv)
			ev->pflags |= MR_F_ROOT_PRIVATE;
		if (trunc) {
			ev->pflags |= MR_F_PATH_TRUNC;
			stat_inc(MR_STAT_PATH_TRUNC);
		}
		if (!(in->matched & MR_OI_MATCHED)) {
			/* relative open: decide on the resolved path */
			len = (MR_HALF - 1 - off) & MR_HALF_MASK;
			if (len >= MR_WATCH_LEN)
				len = MR_WATCH_LEN - 1;
			bpf_probe_read_kernel(k->path, len & (MR_WATCH_LEN - 1),
					      &pbuf[off & MR_HALF_MASK]);
			if (!watch_lookup(k, len) && !file_is_proc_mem(f))
				goto out;
		}
		len = path_copy(ev->data, pbuf, off);
	} else {
		if (!(in->matched & MR_OI_MATCHED))
			goto out; /* a failed relative open cannot be placed */
		r = bpf_probe_read_user_str(ev->data, MR_HALF, (void *)in->fname);
		len = r > 0 ? (r - 1) & MR_HALF_MASK : 0;
		ev->pflags |= MR_F_PATH_RAW;
	}
	ev->path_len = len;
	ev->pad = 0;
	proc_fill(&ev->proc, task);
	len = sizeof(*ev) + (len & MR_HALF_MASK);
	hdr_init(&ev->hdr, MR_OP_OPEN, len);
	emit(ev, len);
out:
	bpf_map_delete_elem(&mr_open_args, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int mr_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx, (const char *)ctx->args[1], ctx->args[2], NR_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int mr_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_open")
int mr_enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx, (const char *)ctx->args[0], ctx->args[1], NR_OPEN);
}

SEC("tracepoint/syscalls/sys_exit_open")
int mr_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int mr_enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	/* creat(path, mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode) */
	return on_enter(ctx, (const char *)ctx->args[0], 01 | 0100 | 01000, 0);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int mr_exit_creat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int mr_enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return on_enter(ctx, (const char *)ctx->args[1], how.flags, 0);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int mr_exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}
