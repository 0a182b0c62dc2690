// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * The generation of paths (mr_pathgen, maps/files.h) for the relative-open directory cache
 * of progs/file.bpf.c: every call that can change the path of an existing directory bumps
 * it when it starts and when it ends, and is counted in flight in between (no cache entry
 * counts then). Syscalls: rename, renameat, renameat2, rmdir, unlinkat (AT_REMOVEDIR),
 * mount, umount2, move_mount, pivot_root, unshare, setns; io_uring: RENAMEAT and UNLINKAT
 * between submission and completion. These are rare: nothing here runs on an open.
 * Only a call whose start was seen is uncounted at its end (mr_pathops), so attaching or
 * detaching mid-call cannot drive the count below zero. A call started and never ended
 * (its end detached) leaves the count up: the cache stays off, which costs time, not events.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/files.h"

#define MR_AT_REMOVEDIR 0x200

static __always_inline void pathop_begin(__u64 who)
{
	__u32 zero = 0;
	__u8 one = 1;
	struct mr_pathgen *g = bpf_map_lookup_elem(&mr_pathgen, &zero);

	if (!g)
		return;
	/* counted unless this caller's start is counted already; with mr_pathops full the
	 * count is never taken back: the cache stays off (time, not events, is lost) */
	if (bpf_map_update_elem(&mr_pathops, &who, &one, BPF_NOEXIST) != -17 /* EEXIST */)
		__sync_fetch_and_add(&g->inflight, 1);
	__sync_fetch_and_add(&g->gen, 1);
}

static __always_inline void pathop_end(__u64 who)
{
	__u32 zero = 0;
	struct mr_pathgen *g = bpf_map_lookup_elem(&mr_pathgen, &zero);

	if (!g)
		return;
	__sync_fetch_and_add(&g->gen, 1);
	if (!bpf_map_delete_elem(&mr_pathops, &who))
		__sync_fetch_and_sub(&g->inflight, 1);
}

static __always_inline __u64 tid_key(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

#define PATHOP(name)                                                                    \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                     \
	int mr_pg_in_##name(void *ctx)                                                  \
	{                                                                               \
		pathop_begin(tid_key());                                                \
		return 0;                                                               \
	}                                                                               \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                      \
	int mr_pg_out_##name(void *ctx)                                                 \
	{                                                                               \
		pathop_end(tid_key());                                                  \
		return 0;                                                               \
	}

PATHOP(rename)
PATHOP(renameat)
PATHOP(renameat2)
PATHOP(rmdir)
PATHOP(mount)
PATHOP(umount)
PATHOP(move_mount)
PATHOP(pivot_root)
PATHOP(unshare)
PATHOP(setns)

/* unlinkat: only with AT_REMOVEDIR (plain unlinks are frequent and change no directory) */
SEC("tracepoint/syscalls/sys_enter_unlinkat")
int mr_pg_in_unlinkat(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[2] & MR_AT_REMOVEDIR)
		pathop_begin(tid_key());
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_unlinkat")
int mr_pg_out_unlinkat(void *ctx)
{
	__u64 who = tid_key();

	if (bpf_map_lookup_elem(&mr_pathops, &who))
		pathop_end(who);
	return 0;
}

/* io_uring runs renames and unlinks without a syscall of their own (possibly on a worker
 * thread): counted from submission to completion, keyed by the request. */
SEC("tracepoint/io_uring/io_uring_submit_req")
int mr_pg_uring_sub(struct trace_event_raw_io_uring_submit_req *ctx)
{
	__u8 op = BPF_CORE_READ(ctx, opcode);

	if (op == IORING_OP_RENAMEAT || op == IORING_OP_UNLINKAT)
		pathop_begin((__u64)BPF_CORE_READ(ctx, req));
	return 0;
}

/* Before 6.4 the submission tracepoint was io_uring_submit_sqe (the same fields); not in
 * the vmlinux.h we build against, so its record is declared here for CO-RE. */
struct trace_event_raw_io_uring_submit_sqe {
	void *req;
	u8 opcode;
} __attribute__((preserve_access_index));

SEC("tracepoint/io_uring/io_uring_submit_sqe")
int mr_pg_uring_sqe(struct trace_event_raw_io_uring_submit_sqe *ctx)
{
	__u8 op = BPF_CORE_READ(ctx, opcode);

	if (op == IORING_OP_RENAMEAT || op == IORING_OP_UNLINKAT)
		pathop_begin((__u64)BPF_CORE_READ(ctx, req));
	return 0;
}

SEC("tracepoint/io_uring/io_uring_complete")
int mr_pg_uring_done(struct trace_event_raw_io_uring_complete *ctx)
{
	__u64 who = (__u64)BPF_CORE_READ(ctx, req);

	if (who && bpf_map_lookup_elem(&mr_pathops, &who))
		pathop_end(who);
	return 0;
}
