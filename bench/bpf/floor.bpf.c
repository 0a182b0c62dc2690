// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Empty programs on the hooks an open can be seen from on a kernel without kprobes,
 * fentry or BPF LSM (bench/floor.py): what attaching anything there costs, before a
 * program does any work. Built by bench/floor.py with clang against bpf/include/vmlinux.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 hits;

/* the per-syscall tracepoints: only openat runs them, through perf's syscall events */
SEC("tracepoint/syscalls/sys_enter_openat")
int floor_tp_enter(void *ctx)
{
	hits++;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int floor_tp_exit(void *ctx)
{
	hits++;
	return 0;
}

/* the raw syscall tracepoints: every syscall of the host runs them */
SEC("tp_btf/sys_enter")
int BPF_PROG(floor_raw_enter, struct pt_regs *regs, long id)
{
	if (id == 257)
		hits++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(floor_raw_exit, struct pt_regs *regs, long ret)
{
	if (regs->orig_ax == 257)
		hits++;
	return 0;
}
