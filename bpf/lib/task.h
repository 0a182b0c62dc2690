/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Readers of task, credential, namespace and cgroup fields (CO-RE only). */
#pragma once

static __always_inline __u64 task_start_ns(struct task_struct *task)
{
	return BPF_CORE_READ(task, group_leader, start_boottime);
}

/* Fill p from task; cgroup id from the task itself (not necessarily current). */
static __always_inline void proc_fill(struct mr_proc *p, struct task_struct *task)
{
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);

	p->pid = BPF_CORE_READ(task, tgid);
	p->tid = BPF_CORE_READ(task, pid);
	p->ppid = BPF_CORE_READ(parent, tgid);
	p->uid = BPF_CORE_READ(task, cred, uid.val);
	p->euid = BPF_CORE_READ(task, cred, euid.val);
	p->gid = BPF_CORE_READ(task, cred, gid.val);
	p->mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	p->pad = 0;
	p->cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	p->start_ns = task_start_ns(task);
	p->pstart_ns = task_start_ns(parent);
	BPF_CORE_READ_STR_INTO(&p->comm, task, comm);
}

static __always_inline void proc_fill_current(struct mr_proc *p)
{
	proc_fill(p, (struct task_struct *)bpf_get_current_task());
}

/* The struct file behind fd in task's table, or NULL. */
static __always_inline struct file *task_fd_file(struct task_struct *task, __u32 fd)
{
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	struct file *f = NULL;

	if (fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}
