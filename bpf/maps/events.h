/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Output maps: the ring buffer every program writes and the per-CPU counters.
 *   mr_events  ring buffer, records of lib/abi.h. Writer: emit(). Reader: agent/events/reader.py.
 *   mr_stats   per-CPU u64 counters indexed by enum mr_stat. Writer: stat_inc().
 *              Reader: agent/output/metrics.py at scrape time. */
#pragma once

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20); /* the loader may resize before load */
} mr_events SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MR_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mr_stats SEC(".maps") __weak;
