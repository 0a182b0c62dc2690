// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Exact aggregation of repeated events (file opens), so that a storm costs a bounded number
 * of records and loses nothing.
 *
 * The key is the record itself but its header: the task (tgid, tid, start time, ids,
 * comm...), the open's flags, result, pflags and resolved path (or the path as written for
 * a failed open), byte for byte (maps/agg.h). A key's first two events are written in
 * full at once (detection and enforcement never wait; the first only makes the entry, so
 * that an entry made from a key another task overwrote can hide nothing), the second opens
 * a window of cfg_agg_ns; identical events inside the window are only counted; the key's
 * first event after the window is written in full again and opens the next one. The counts go out as summaries (struct
 * mr_repeat followed by the repeated record) written by the sweeper (mr_agg_sweep, a
 * syscall program the agent runs every 250 ms) once a key's first pending repeat is a
 * window old: a summary is at most a window and a sweep late, and is built from the map's
 * own copy of the key, never from per-CPU scratch another task may be writing.
 *
 * The task adds with an atomic add and the sweeper takes with an atomic exchange, so a
 * repeat is in exactly one summary whatever the interleaving (first/last may be off by
 * that race, never the count). A summary the ring refuses is added back
 * (MR_STAT_AGG_RETRY) and goes out with the next sweep. A full map: the event is written in
 * full, as without aggregation (MR_STAT_AGG_FULL). Compiled with -mcpu=v3 (atomic exchange
 * and fetch); file.bpf.c calls the global functions below, each verified once.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/agg.h"

__weak const volatile __u64 cfg_agg_ns = 0; /* the window; 0: no aggregation */

/* Write the summary `rep` (its open record after it, path of len bytes); 0: written. */
static __always_inline long repeat_out(struct mr_repeat *rep, __u32 len, __u64 flags)
{
	__u32 size = sizeof(*rep) + sizeof(struct mr_open) + (len & (MR_AGG_PATH - 1));

	rep->hdr.op = MR_OP_REPEAT;
	rep->hdr.size = size;
	rep->hdr.cpu = bpf_get_smp_processor_id();
	rep->hdr.ts = bpf_ktime_get_boot_ns();
	if (bpf_ringbuf_output(&mr_events, rep, size & 0xffff, flags))
		return -1;
	stat_inc(MR_STAT_EVENTS);
	return 0;
}

static __always_inline struct mr_agg_scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mr_aggkey, &zero);
}

__noinline __u64 mr_agg_begin(void)
{
	struct mr_agg_scratch *s = scratch();

	if (!s)
		return 0;
	__sync_fetch_and_add(&s->inflight, 1);
	return __sync_fetch_and_add(&s->seq, 1) + 1;
}

__noinline int mr_agg_end(void)
{
	struct mr_agg_scratch *s = scratch();

	if (s)
		__sync_fetch_and_add(&s->inflight, -1);
	return 0;
}

/* The open record under construction is in mr_heap[0] after room for a struct mr_repeat
 * (progs/file.bpf.c), its path len bytes; seq: mr_agg_begin's. 1: a repeat, counted (do
 * not write it); 0: write it. */
__noinline int mr_agg_open(__u32 len, __u64 seq)
{
	struct mr_repeat *rep = heap_slot(0);
	struct mr_agg_scratch *s = scratch();
	struct mr_agg_val *v, nv = {};
	__u64 me = bpf_get_current_pid_tgid(), now;
	struct mr_agg_key *k;
	struct mr_open *ev;

	if (!rep || !s || !cfg_agg_ns || len >= MR_AGG_PATH)
		return 0;
	k = &s->key;
	ev = (struct mr_open *)(rep + 1);
	__builtin_memcpy(k, &ev->proc, offsetof(struct mr_agg_key, path));
	__builtin_memset(k->path, 0, MR_AGG_PATH);
	bpf_probe_read_kernel(k->path, len & (MR_AGG_PATH - 1), ev->data);
	now = ev->hdr.ts;
	v = bpf_map_lookup_elem(&mr_agg, k);
	/* the record and the key were this task's alone (maps/agg.h) */
	if (*(volatile __u64 *)&s->seq != seq || *(volatile __s64 *)&s->inflight != 1 ||
	    k->proc.tid != (__u32)me || k->proc.pid != me >> 32) {
		stat_inc(MR_STAT_AGG_RACE);
		return 0;
	}
	if (!v) {
		/* no window yet: the key's next event is written in full too and opens it.
		 * Another task may have rewritten the scratch key since the check above; the
		 * entry it would then make for someone else's key hides nothing either. */
		nv.last_ns = now;
		if (bpf_map_update_elem(&mr_agg, k, &nv, BPF_NOEXIST))
			stat_inc(MR_STAT_AGG_FULL);
		return 0;
	}
	if ((__s64)(now - v->win_ns) >= (__s64)cfg_agg_ns) {
		/* the window is over: this event in full opens the next one (what was counted
		 * goes out with the sweeper's next summary) */
		v->win_ns = now;
		return 0;
	}
	if (__sync_fetch_and_add(&v->count, 1) == 0)
		v->first_ns = now;
	v->last_ns = now;
	stat_inc(MR_STAT_AGG);
	return 1;
}

struct mr_sweep {
	__u64 now;
	__u32 sent;
	__u32 force; /* every pending count, windows open or not (the agent stopping) */
};

/* The context the agent passes (agent/events/aggregate.py). */
struct mr_sweep_ctx {
	__u32 force;
	__u32 pad;
};

static long sweep_one(struct bpf_map *map, struct mr_agg_key *k, struct mr_agg_val *v,
		      struct mr_sweep *s)
{
	__u32 zero = 0, len;
	struct mr_aggrec *r;
	struct mr_open *ev;
	__u64 c, first, last;

	if (!v->count || (!s->force && (__s64)(s->now - v->first_ns) < (__s64)cfg_agg_ns))
		return 0; /* nothing counted, or its first repeat not a window old yet */
	r = bpf_map_lookup_elem(&mr_aggrec, &zero);
	if (!r)
		return 1;
	first = v->first_ns;
	last = v->last_ns;
	c = __sync_lock_test_and_set(&v->count, 0);
	if (!c)
		return 0;
	ev = (struct mr_open *)r->open;
	len = k->path_len & (MR_AGG_PATH - 1);
	__builtin_memcpy(&ev->proc, k, offsetof(struct mr_agg_key, path));
	__builtin_memcpy(ev->data, k->path, MR_AGG_PATH);
	ev->hdr.op = MR_OP_OPEN;
	ev->hdr.size = sizeof(*ev) + len;
	ev->hdr.cpu = 0;
	ev->hdr.ts = first;
	r->rep.count = c;
	r->rep.first_ns = first;
	r->rep.last_ns = last;
	if (repeat_out(&r->rep, len, BPF_RB_FORCE_WAKEUP)) {
		__sync_fetch_and_add(&v->count, c);
		stat_inc(MR_STAT_AGG_RETRY);
		return 1; /* the ring is full: try again next time */
	}
	s->sent++;
	return 0;
}

/* Run by the agent (BPF_PROG_TEST_RUN) every 250 ms: the summaries of keys whose window is
 * over (with force: of every key, at the agent's stop). Returns how many it wrote. */
SEC("syscall")
int mr_agg_sweep(struct mr_sweep_ctx *ctx)
{
	struct mr_sweep s = {.now = bpf_ktime_get_boot_ns(), .force = ctx->force};

	if (!cfg_agg_ns)
		return 0;
	bpf_for_each_map_elem(&mr_agg, sweep_one, &s, 0);
	return s.sent;
}
