// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* fork/clone of a new process (not a thread): gives user space the child's identity and
 * parent before the child can exec, so ancestry is complete. */
#include "../lib/common.h"
#include "../lib/task.h"

SEC("tp_btf/sched_process_fork")
int BPF_PROG(mr_fork, struct task_struct *parent, struct task_struct *child)
{
	struct mr_fork ev = {};

	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid) || is_self())
		return 0;
	proc_fill(&ev.proc, child);
	hdr_init(&ev.hdr, MR_OP_FORK, sizeof(ev));
	emit(&ev, sizeof(ev));
	return 0;
}
