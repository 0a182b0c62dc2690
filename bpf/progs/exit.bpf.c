// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* exit of a whole process: reported once, by its last thread (signal->live reached 0
 * before the tracepoint on every kernel we support), with the wait(2) status. */
#include "../lib/common.h"
#include "../lib/task.h"

SEC("tp_btf/sched_process_exit")
int BPF_PROG(mr_exit, struct task_struct *task)
{
	struct mr_exit ev = {};

	if (BPF_CORE_READ(task, signal, live.counter) != 0 || is_self())
		return 0;
	proc_fill(&ev.proc, task);
	ev.proc.tid = ev.proc.pid; /* identify the process, not the last thread */
	ev.status = BPF_CORE_READ(task, exit_code);
	hdr_init(&ev.hdr, MR_OP_EXIT, sizeof(ev));
	emit(&ev, sizeof(ev));
	return 0;
}
