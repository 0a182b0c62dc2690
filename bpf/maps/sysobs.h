/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Observed syscalls (progs/syscalls_obs.bpf.c).
 *   mr_sys_args  hash tid -> the syscall in flight (number and raw arguments), written at
 *                sys_enter when the call is worth reporting, read and deleted at sys_exit.
 *                LRU: a task killed inside a syscall never reaches sys_exit; its entry is
 *                evicted instead of filling the map. */
#pragma once

struct mr_sys_inflight {
	__u64 args[6];
	__u32 nr;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct mr_sys_inflight);
} mr_sys_args SEC(".maps") __weak;
