// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Scope bookkeeping in the kernel, synchronous with the cgroup's life: a new cgroup v2
 * directory is marked pending (mr_ppend) before any task can enter it, inheriting its
 * parent's slots (a container cgroup nested in a covered one stays covered); a removed one
 * loses its rows, so a cgroup id never carries a stale scope.
 */
#include "../lib/common.h"
#include "../maps/policy.h"

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(mr_enf_cgmkdir, struct cgroup *cgrp, const char *path)
{
	struct mr_ppend p = {}, *pp;
	__u64 id, parent, *pm;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	id = BPF_CORE_READ(cgrp, kn, id);
	parent = BPF_CORE_READ(cgrp, self.parent, cgroup, kn, id);
	pm = bpf_map_lookup_elem(&mr_pscope, &parent);
	if (pm) {
		p.mask = *pm;
	} else {
		pp = bpf_map_lookup_elem(&mr_ppend, &parent);
		if (pp)
			p.mask = pp->mask;
	}
	p.ts = bpf_ktime_get_boot_ns();
	bpf_map_update_elem(&mr_ppend, &id, &p, BPF_ANY);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(mr_enf_cgrmdir, struct cgroup *cgrp, const char *path)
{
	__u64 id;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	id = BPF_CORE_READ(cgrp, kn, id);
	bpf_map_delete_elem(&mr_pscope, &id);
	bpf_map_delete_elem(&mr_ppend, &id);
	return 0;
}
