/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Aggregation of repeated events (progs/agg.bpf.c).
 *   mr_agg     hash: a record's every byte but its header (the task, the open's flags,
 *              result, pflags and path, zero-padded) -> the repeats counted since the last
 *              summary. Equality is the kernel's memcmp of the whole key: no hash decides it.
 *              Writers: the task of the key (mr_agg_open, one task runs one syscall at a
 *              time, so only its own open touches an entry), which adds to `count`
 *              atomically, and the sweeper (mr_agg_sweep, run by the agent), which takes it
 *              by atomic exchange: every repeat is summed into exactly one summary. Entries are deleted only by the agent, for
 *              tasks that have exited (agent/events/aggregate.py): nothing can touch them.
 *              Not an LRU: an eviction would lose pending counts.
 *   mr_aggkey  per-CPU scratch: the key being built and the sequence of mr_agg_seq.
 *   mr_aggrec  per-CPU scratch of the sweeper: the summary being built. */
#pragma once

#define MR_AGG_PATH 256 /* longer paths are not aggregated (written in full each time) */

struct mr_agg_key {
	struct mr_proc proc;
	__u32 flags;
	__s32 ret;
	__u16 pflags;
	__u16 path_len;
	__u32 pad;
	char path[MR_AGG_PATH];
};

struct mr_agg_val {
	__u64 count;    /* repeats not yet in a summary */
	__u64 first_ns; /* the first of them (approximate while the sweeper races the task) */
	__u64 last_ns;  /* the last event of the key (full or counted) */
	__u64 win_ns;   /* when the current window began (its full event) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct mr_agg_key);
	__type(value, struct mr_agg_val);
} mr_agg SEC(".maps") __weak;

/* Where syscall tracepoints are preemptible, another task's open exit can run on this CPU
 * between a task's writing its record into the shared per-CPU mr_heap[0] and keying it,
 * and leave its own bytes there. An exit is "in flight" from mr_agg_begin to mr_agg_end;
 * a record is counted only when its exit was the only one in flight and no other began
 * since its own (seq), else it is written in full (MR_STAT_AGG_RACE). */
struct mr_agg_scratch {
	__u64 seq;      /* bumped by every mr_agg_begin */
	__s64 inflight; /* exits between mr_agg_begin and mr_agg_end on this CPU */
	struct mr_agg_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mr_agg_scratch);
} mr_aggkey SEC(".maps") __weak;

struct mr_aggrec {
	struct mr_repeat rep;
	char open[sizeof(struct mr_open) + MR_AGG_PATH]; /* the repeated record */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mr_aggrec);
} mr_aggrec SEC(".maps") __weak;

/* progs/agg.bpf.c, called by progs/file.bpf.c (global functions: verified once):
 * mr_agg_begin before an open's exit writes its record into mr_heap[0], mr_agg_open to
 * count it or not, mr_agg_end after it was written or counted. */
__u64 mr_agg_begin(void);
int mr_agg_open(__u32 len, __u64 seq);
int mr_agg_end(void);
