// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Syscall deny list (mr_psys: syscall nr -> slots): tp_btf raw_syscalls/sys_enter, SIGKILL. The
 * signal is delivered when the syscall returns: the syscall itself runs (kill-after tier),
 * nothing after it does. Native (64-bit) syscall numbers only; the array lookup comes
 * first so a syscall no policy names costs one array read.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

SEC("tp_btf/sys_enter")
int BPF_PROG(mr_enf_sys, struct pt_regs *regs, long id)
{
	__u32 nr = id;
	struct mr_pconf *c;
	struct mr_enforce ev;
	__u64 *m, scope, hit, enf;
	int pending;

	if (nr >= MR_SYS_MAX)
		return 0;
	/* every syscall on the host comes here: with no syscall rule active, stop at once */
	c = pconf();
	if (!c || !(c->active & c->syscalls))
		return 0;
	m = bpf_map_lookup_elem(&mr_psys, &nr);
	if (!m || !*m || !(c->active & c->syscalls & *m))
		return 0;
	scope = scope_of(c, bpf_get_current_cgroup_id(), &pending);
	hit = *m & scope & c->active;
	if (!hit)
		return 0;
	enf = hit & c->enforce;
	if (enf)
		bpf_send_signal(SIGKILL);
	enf_init(&ev, MR_EK_SYSCALL, action_of(enf, MR_EA_KILLED), hit, enf);
	ev.arg = nr;
	hdr_init(&ev.hdr, MR_OP_ENFORCE, sizeof(ev));
	emit_now(&ev, sizeof(ev));
	return 0;
}
