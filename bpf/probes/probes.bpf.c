// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* One trivial program per hook kind. The feature probe (agent/bpf/features.py) loads and
 * attaches each one alone: what loads here is what the agent may rely on. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("lsm/bprm_check_security")
int BPF_PROG(probe_lsm, struct linux_binprm *bprm) { return 0; }

SEC("fentry/do_unlinkat")
int BPF_PROG(probe_fentry, int dfd) { return 0; }

/* fmod_ret on a security_* function: the verifier allows it for that prefix whether or not
 * BPF LSM is active, so a nonzero return refuses the call (EPERM) on kernels with BPF
 * trampolines but without `bpf` in the LSM list (most distribution kernels) */
SEC("fmod_ret/security_inode_permission")
int BPF_PROG(probe_fmod_ret, struct inode *inode, int mask, int ret) { return 0; }

SEC("kprobe/do_unlinkat")
int probe_kprobe(void *ctx) { return 0; }

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_tp_btf, struct task_struct *p) { return 0; }

SEC("raw_tracepoint/sys_enter")
int probe_raw_tp(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_enter_getpid")
int probe_tracepoint(void *ctx) { return 0; }

/* Task-local storage from a syscall tracepoint (loads on Debian 6.1 and on 6.18):
 * progs/file.bpf.c keeps an open in flight there instead of a hash keyed by tid. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} probe_ts SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int probe_task_storage(void *ctx)
{
	__u64 *v = bpf_task_storage_get(&probe_ts, bpf_get_current_task_btf(), 0,
					BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (v)
		*v = 1;
	return 0;
}

SEC("cgroup/connect4")
int probe_cgroup_connect4(struct bpf_sock_addr *ctx) { return 1; }

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ringbuf SEC(".maps");

SEC("tp_btf/sched_process_fork")
int BPF_PROG(probe_ringbuf_output, struct task_struct *p)
{
	bpf_ringbuf_output(&probe_ringbuf, &p, sizeof(p), 0);
	return 0;
}

/* The helper must pass the verifier; the condition (the idle task forking) never holds. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(probe_send_signal, struct task_struct *p)
{
	if (bpf_get_current_pid_tgid() == 0)
		bpf_send_signal(9);
	return 0;
}
