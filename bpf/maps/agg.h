/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Aggregation of repeated events (progs/agg.bpf.c).
 *   mr_agg     hash: a record's every byte but its header (the task, the open's flags,
 *              result, pflags and path, zero-padded) -> the repeats counted since the last
 *              summary. Equality is the kernel's memcmp of the whole key: no hash decides it.
 *              Writers: the task of the key (mr_agg_open, one task runs one syscall at a
 *              time, so only its own open touches an entry) and the sweeper (mr_agg_sweep,
 *              run by the agent); both take `count` by atomic exchange, so every repeat is
 *              summed into exactly one summary. Entries are deleted only by the agent, for
 *              tasks that have exited (agent/events/aggregate.py): nothing can touch them.
 *              Not an LRU: an eviction would lose pending counts.
 *   mr_aggkey  per-CPU scratch: the key being built.
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mr_agg_key);
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

/* progs/agg.bpf.c, called by progs/file.bpf.c (a global function: verified once). */
int mr_agg_open(__u32 len);
