/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Per-CPU scratch space (BPF stacks are 512 bytes). Programs run with preemption off on
 * one CPU, so one slot per CPU is never shared by two running programs at once.
 *   mr_heap  the record under construction (index 0) and a path buffer (index 1).
 *   mr_wkey  an LPM key for mr_watch lookups. */
#pragma once

#define MR_HEAP_SIZE 16384
#define MR_HALF 4096      /* path strings are built in the first half of a path buffer */
#define MR_HALF_MASK (MR_HALF - 1)

struct mr_heap_buf {
	char data[MR_HEAP_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct mr_heap_buf);
} mr_heap SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mr_watch_key);
} mr_wkey SEC(".maps") __weak;

static __always_inline void *heap_slot(__u32 idx)
{
	return bpf_map_lookup_elem(&mr_heap, &idx);
}
