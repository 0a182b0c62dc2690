// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* cgroup v2 directories created and removed: user space learns a container's cgroup id
 * and path before the first process in it runs (agent/enrich/cgroups.py). Only the default
 * (v2) hierarchy, hierarchy id 0, is reported; v1 controller hierarchies are ignored. */
#include "../lib/common.h"
#include "../maps/scratch.h"

static __always_inline int on_cgroup(struct cgroup *cgrp, const char *path, __u16 op)
{
	struct mr_cgroup *ev = heap_slot(0);
	long r;
	__u32 len;

	if (!ev || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	ev->id = BPF_CORE_READ(cgrp, kn, id);
	ev->level = BPF_CORE_READ(cgrp, level);
	ev->pad = 0;
	r = bpf_probe_read_kernel_str(ev->data, 4096, path);
	len = r > 0 ? (r - 1) & 4095 : 0;
	ev->path_len = len;
	len += sizeof(*ev);
	hdr_init(&ev->hdr, op, len);
	emit_now(ev, len);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(mr_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	return on_cgroup(cgrp, path, MR_OP_CGROUP_MKDIR);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(mr_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	return on_cgroup(cgrp, path, MR_OP_CGROUP_RMDIR);
}
