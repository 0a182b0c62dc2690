// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Exec enforcement: deny list, allow-list and drift (maps/policy.h: mr_pexec, mr_pconf).
 *
 * Two tiers, one check: lsm/bprm_check_security returns -EPERM (the exec fails, nothing of
 * the new image runs) where BPF LSM is usable; elsewhere tp_btf/sched_process_exec sends
 * SIGKILL after the old image is gone and before the new one's first instruction (the
 * caller sees exit status 137). The agent enables exactly one of the two (features.py).
 *
 * Both the resolved binary (symlinks followed: busybox for /bin/sh -> busybox) and the
 * filename as passed to execve are looked up; a rule matching either applies. A deny rule
 * also matches the binary's identity (mr_pino): a hard link of it by another name.
 *
 * New containers: the first exec in a cgroup the agent has not classified yet (mr_ppend)
 * is stopped with SIGSTOP and recorded in mr_phold, with the slots that would deny it in
 * any scope; the agent intersects them with the cgroup's scope once it knows it and sends
 * SIGKILL or SIGCONT. Only while the agent's heartbeat is fresh (mr_palive). The hold is
 * Agent down (issue 13, spec.agentDown): while the heartbeat is stale and an active
 * policy has agentDown: closed, the first exec in a pending cgroup is held for a dead agent
 * (as above, record arg MR_ARG_AGENT_DOWN) unless it inherited slots from a classified
 * container (a nested cgroup: covered by those), while the agent has been silent for less than
 * mr_pconf.down_hold_ns, and refused after that (SIGKILL, or EPERM on the LSM tier); the
 * agent decides the held ones when it is back, or its guard (agent/policy/guard.py) once
 * the bound has passed. With only agentDown: open policies nothing is held (the cgroup
 * runs with what it inherited until the agent is back and classifies it).
 *
 * The hold is always taken at sched_process_exec, on the LSM tier too (cfg_exec_lsm: the tracepoint
 * program then holds and does nothing else): at bprm_check_security the execing process
 * may still have other threads (runc init is a Go program), one of them can dequeue the
 * group SIGSTOP, and de_thread() then cancels that group stop: the hold is lost (seen on
 * Debian 6.12 under qemu). After exec the process has one thread and the stop holds.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define EPERM 1

static __always_inline int exec_check(struct linux_binprm *bprm, int lsm)
{
	struct mr_pheap_buf *h = pheap();
	struct mr_pconf *c = pconf();
	struct mr_enforce *ev;
	struct file *file;
	const char *filename;
	__u64 cgid, scope, deny = 0, allow = 0, drift = 0, hit, enf;
	__u32 off, trunc = 0, len1, len2 = 0;
	int pending, hold = 0, down = 0; /* down: 1 held for a dead agent, 2 refused */
	__u64 closed, silent;
	__u16 kind, action;

	if (!h || !c || !c->active)
		return 0;
	cgid = bpf_get_current_cgroup_id();
	scope = scope_of(c, cgid, &pending);
	closed = c->down_closed & c->active;
	if (pending) {
		silent = agent_silent_ns();
		/* a cgroup nested in a classified container keeps the policies it inherited */
		if (silent < MR_ALIVE_NS)
			hold = (c->flags & MR_PC_HOLD) != 0;
		else if (!scope && (closed & c->enforce) && silent < c->down_hold_ns)
			hold = down = 1;
		else if (!scope && closed)
			down = 2;
	}
	/* LSM tier: the LSM hook denies, the sched_process_exec program only holds */
	if (cfg_exec_lsm && (lsm ? hold : !hold))
		return 0;
	if (!hold && !down && !(scope & c->exec))
		return 0;

	file = BPF_CORE_READ(bprm, file);
	off = path_resolve(__builtin_preserve_access_index(&file->f_path), h->pbuf, &trunc);
	key_from_resolved(&h->k1, h->pbuf, off);
	exec_masks(&h->k1, &deny, &allow);
	filename = BPF_CORE_READ(bprm, filename);
	len2 = key_from_kstr(&h->k2, filename);
	if (len2)
		exec_masks(&h->k2, &deny, &allow);
	exec_ident_masks(BPF_CORE_READ(file, f_inode), &deny);
	deny = (deny | (c->exec_allow & ~allow)) & c->active;
	if ((c->drift & c->active) && is_drift(file))
		drift = c->drift & c->active;

	ev = (struct mr_enforce *)h->rec;
	if (hold) {
		struct mr_phold hd = {};
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		hd.cgroup_id = cgid;
		hd.start_ns = task_start_ns((struct task_struct *)bpf_get_current_task());
		hd.exec_deny = deny;
		hd.drift = drift;
		hd.ts = bpf_ktime_get_boot_ns();
		if (bpf_map_update_elem(&mr_phold, &tgid, &hd, BPF_ANY) == 0) {
			bpf_send_signal(SIGSTOP);
			enf_init(ev, MR_EK_EXEC, MR_EA_HELD,
				 deny | drift | (down ? closed & c->enforce : 0), 0);
			if (down)
				ev->arg = MR_ARG_AGENT_DOWN;
			goto out;
		}
		/* hold table full: decide with what the kernel knows now (fail closed) */
		if (down)
			down = 2;
	}
	if (down == 2) { /* the agent is gone for longer than the closed policies wait */
		hit = closed | ((deny | drift) & scope);
		enf = hit & c->enforce;
		action = action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED);
		if (enf && !lsm)
			bpf_send_signal(SIGKILL);
		enf_init(ev, MR_EK_EXEC, action, hit, enf);
		ev->arg = MR_ARG_AGENT_DOWN;
		goto out;
	}
	hit = (deny | drift) & scope;
	if (!hit)
		return 0;
	enf = hit & c->enforce;
	kind = (deny & scope) ? MR_EK_EXEC : MR_EK_DRIFT;
	action = action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED);
	if (enf && !lsm)
		bpf_send_signal(SIGKILL);
	enf_init(ev, kind, action, hit, enf);
out:
	{ /* the binary's identity: names the rule when it was denied by another name */
		struct mr_pino_key ik;

		inode_key(&ik, BPF_CORE_READ(file, f_inode));
		__builtin_memcpy(ev->addr, &ik, sizeof(ik));
	}
	len1 = path_copy(ev->data, h->pbuf, off);
	emit_paths(h, ev, len1, len2);
	return (ev->action == MR_EA_BLOCKED) ? -EPERM : 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(mr_enf_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	exec_check(bprm, 0);
	return 0;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(mr_lsm_exec, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	return exec_check(bprm, 1);
}
