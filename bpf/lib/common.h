/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Included first by every program: kernel types, libbpf helpers, the ABI, load-time
 * settings and the one function that writes records to the ring buffer.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "abi.h"
#include "../maps/events.h"
#include "../maps/policy.h"

char LICENSE[] SEC("license") __weak = "GPL";

/* Load-time settings, written by the loader into .rodata before load (agent/bpf/loader.py). */
__weak const volatile __u32 cfg_self_tgid = 0;    /* the agent: its own activity is not reported */
__weak const volatile __u32 cfg_args_max = 1024;  /* bytes of argv copied per exec (<= 4096) */
__weak const volatile __u32 cfg_watch_proc_mem = 1; /* report opens of /proc/<pid>/mem */
__weak const volatile __u32 cfg_wakeup_bytes = 0;  /* 0: wake the reader on every record */
__weak const volatile __u32 cfg_exec_lsm = 0;      /* exec denials by BPF LSM (holds stay at exec) */
/* Syscall tracepoints may use task-local storage (agent/bpf/features.py probes it; 6.1 and 6.18 do):
 * progs/file.bpf.c keeps an open in flight there (mr_open_ts), else in mr_open_args. */
__weak const volatile __u32 cfg_open_ts = 0;
/* The host's root directory (stat of /proc/1/root); 0: unknown. */
__weak const volatile __u64 cfg_host_root_ino = 0;
__weak const volatile __u32 cfg_host_root_dev = 0; /* kernel dev_t: major << 20 | minor */
/* The root file events' paths are told apart by (path.h): pid 1's, else the host root the
 * agent was given (--host-root, "/" on a host); 0: unknown, no path is called private. */
__weak const volatile __u64 cfg_path_root_ino = 0;
__weak const volatile __u32 cfg_path_root_dev = 0;

/* Atomic although the counters are per CPU: where a program can be preempted (faultable
 * syscall tracepoints on recent kernels), two programs may interleave on one CPU, and a
 * lost increment of MR_STAT_RB_DROP would be a loss nobody hears of. */
static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&mr_stats, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void hdr_init(struct mr_hdr *h, __u16 op, __u16 size)
{
	h->op = op;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->ts = bpf_ktime_get_boot_ns();
}

/* The only writer to the ring buffer; failures are counted per CPU, in all and per record
 * type (the opcode in rec's header). */
static __always_inline void emit_flags(void *rec, __u64 size, __u64 flags)
{
	__u16 op;

	if (bpf_ringbuf_output(&mr_events, rec, size, flags)) {
		stat_inc(MR_STAT_RB_DROP);
		op = ((struct mr_hdr *)rec)->op;
		if (op < MR_STAT_MAX - MR_STAT_DROP_BASE)
			stat_inc(MR_STAT_DROP_BASE + op);
	} else {
		stat_inc(MR_STAT_EVENTS);
	}
}

/* Wake-up flags for a record nobody waits for. With cfg_wakeup_bytes set, it wakes the
 * reader only once that much data is waiting: the reader otherwise collects on its own
 * short timer (agent/events/reader.py), so a trickle of events costs a few wake-ups per
 * second instead of one (and two thread switches in the agent) per record. Except from a
 * cgroup created moments ago and not yet classified (mr_ppend): a new container's
 * identity must be read while its runtime's state exists, which for a short-lived one is
 * a few milliseconds, so its records wake the reader at once. (Forced: the kernel's
 * default wakes only when no earlier record is still unread, and batched ones may be.) */
static __always_inline __u64 wake_flags(void)
{
	__u64 cg;

	if (!cfg_wakeup_bytes)
		return 0;
	cg = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&mr_ppend, &cg))
		return BPF_RB_FORCE_WAKEUP;
	return bpf_ringbuf_query(&mr_events, BPF_RB_AVAIL_DATA) >= cfg_wakeup_bytes ?
		       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* fork, exit, open, network, exec: batched wake-ups */
static __always_inline void emit(void *rec, __u64 size)
{
	emit_flags(rec, size, wake_flags());
}

/* Records wanted at once (enforcement, observed syscalls, cgroups): a forced wake-up
 * when batching is on (see wake_flags), else the kernel's default. */
static __always_inline void emit_now(void *rec, __u64 size)
{
	emit_flags(rec, size, cfg_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : 0);
}

static __always_inline int is_self(void)
{
	return cfg_self_tgid && (bpf_get_current_pid_tgid() >> 32) == cfg_self_tgid;
}
