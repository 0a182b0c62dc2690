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

char LICENSE[] SEC("license") __weak = "GPL";

/* Load-time settings, written by the loader into .rodata before load (agent/bpf/loader.py). */
__weak const volatile __u32 cfg_self_tgid = 0;    /* the agent: its own activity is not reported */
__weak const volatile __u32 cfg_args_max = 1024;  /* bytes of argv copied per exec (<= 4096) */
__weak const volatile __u32 cfg_watch_proc_mem = 1; /* report opens of /proc/<pid>/mem */
__weak const volatile __u32 cfg_exec_lsm = 0;      /* exec denials by BPF LSM (holds stay at exec) */

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&mr_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void hdr_init(struct mr_hdr *h, __u16 op, __u16 size)
{
	h->op = op;
	h->size = size;
	h->cpu = bpf_get_smp_processor_id();
	h->ts = bpf_ktime_get_boot_ns();
}

/* The only writer to the ring buffer; failures are counted per CPU. */
static __always_inline void emit(void *rec, __u64 size)
{
	if (bpf_ringbuf_output(&mr_events, rec, size, 0))
		stat_inc(MR_STAT_RB_DROP);
	else
		stat_inc(MR_STAT_EVENTS);
}

static __always_inline int is_self(void)
{
	return cfg_self_tgid && (bpf_get_current_pid_tgid() >> 32) == cfg_self_tgid;
}
