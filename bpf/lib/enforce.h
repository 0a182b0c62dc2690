/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Helpers shared by progs/enforce_*.bpf.c: the live policy configuration, the slots that
 * cover the current task (its cgroup), path -> LPM key, verdicts, and the enforcement
 * record. Include after common.h, scratch.h, task.h, path.h and maps/policy.h.
 *
 * Verdict of a rule kind for a task = (slots whose rules match the object) & (slots in
 * scope of the task's cgroup) & (slots active). Of those, slots in enforce mode act (kill
 * or EPERM); if none does, monitor-mode slots produce a would-block record. Several
 * policies on one container: the most restrictive wins because any enforcing slot acts.
 */
#pragma once

#define SIGKILL 9
#define SIGSTOP 19
#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
#define OVERLAYFS_SUPER_MAGIC 0x794c7630
#define TMPFS_MAGIC 0x01021994
#define RAMFS_MAGIC 0x858458f6

static __always_inline struct mr_pconf *pconf(void)
{
	__u32 zero = 0, idx;
	__u32 *gen = bpf_map_lookup_elem(&mr_pgen, &zero);

	if (!gen)
		return 0;
	idx = *gen & 1;
	return bpf_map_lookup_elem(&mr_pconf, &idx);
}

/* Slots covering cgroup cgid: its mr_pscope row; a pending (unclassified) cgroup gets the
 * mask inherited at mkdir; any other cgroup is a host cgroup. */
static __always_inline __u64 scope_of(struct mr_pconf *c, __u64 cgid, int *pending)
{
	__u64 *s = bpf_map_lookup_elem(&mr_pscope, &cgid);
	struct mr_ppend *p;

	*pending = 0;
	if (s)
		return *s & c->active;
	p = bpf_map_lookup_elem(&mr_ppend, &cgid);
	if (p) {
		*pending = 1;
		return p->mask & c->active;
	}
	return c->host & c->active;
}

/* ns since the agent's last heartbeat (~0: never, or unknown) */
static __always_inline __u64 agent_silent_ns(void)
{
	__u32 zero = 0;
	__u64 *t = bpf_map_lookup_elem(&mr_palive, &zero);

	return (t && *t) ? bpf_ktime_get_boot_ns() - *t : ~0ULL;
}

static __always_inline int agent_alive(void)
{
	return agent_silent_ns() < MR_ALIVE_NS;
}

static __always_inline struct mr_pheap_buf *pheap(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mr_pheap, &zero);
}

/* Resolved path -> key (exact form: NUL counted). Returns the string length. */
static __always_inline __u32 key_from_resolved(struct mr_ppath_key *k, const char *pbuf,
					       __u32 off)
{
	__u32 len = (MR_HALF - 1 - off) & MR_HALF_MASK;

	if (len > MR_PATH_KEY - 1)
		len = MR_PATH_KEY - 1; /* too long: only prefix rules can match it */
	bpf_probe_read_kernel(k->path, (len + 1) & (2 * MR_PATH_KEY - 1), &pbuf[off & MR_HALF_MASK]);
	k->path[len & (MR_PATH_KEY - 1)] = 0;
	k->prefixlen = (len + 1) * 8;
	return len;
}

/* Kernel string (e.g. bprm->filename) -> key; 0 when it is not absolute. */
static __always_inline __u32 key_from_kstr(struct mr_ppath_key *k, const char *s)
{
	long r = bpf_probe_read_kernel_str(k->path, MR_PATH_KEY, s);

	if (r <= 1 || k->path[0] != '/')
		return 0;
	k->prefixlen = r * 8; /* r counts the NUL */
	return r - 1;
}

static __always_inline void exec_masks(struct mr_ppath_key *k, __u64 *deny, __u64 *allow)
{
	struct mr_pexec_val *v = bpf_map_lookup_elem(&mr_pexec, k);

	if (v) {
		*deny |= v->deny;
		*allow |= v->allow;
	}
}

/* Drift: the file is not part of the image: on an overlayfs upper layer (written or
 * copied up after the container started), or on tmpfs / ramfs (incl. memfd). For a
 * mapping's file pass the path's dentry's inode: its f_inode may be overlayfs's real file,
 * the layer's (progs/enforce_mmap.bpf.c). */
static __always_inline int inode_drift(struct inode *inode)
{
	unsigned long magic = BPF_CORE_READ(inode, i_sb, s_magic);
	struct ovl_inode *oi;

	if (magic == TMPFS_MAGIC || magic == RAMFS_MAGIC)
		return 1;
	/* overlayfs built as a module (Debian): struct ovl_inode is only known once
	 * overlay.ko is loaded; without the type, the relocation would make the load fail */
	if (magic != OVERLAYFS_SUPER_MAGIC || !bpf_core_type_exists(struct ovl_inode))
		return 0;
	oi = container_of(inode, struct ovl_inode, vfs_inode);
	return BPF_CORE_READ(oi, __upperdentry) != 0;
}

static __always_inline int is_drift(struct file *f)
{
	return inode_drift(BPF_CORE_READ(f, f_inode));
}

/* The identity of an inode as mr_pino keys it (what stat() reports as st_dev/st_ino,
 * st_dev in the kernel's encoding). */
static __always_inline void inode_key(struct mr_pino_key *k, struct inode *inode)
{
	k->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	k->ino = BPF_CORE_READ(inode, i_ino);
}

/* Exec deny by identity: the slots whose exec deny rules name this inode by any name. */
static __always_inline void exec_ident_masks(struct inode *inode, __u64 *deny)
{
	struct mr_pino_key k;
	struct mr_pino_val *v;

	inode_key(&k, inode);
	v = bpf_map_lookup_elem(&mr_pino, &k);
	if (v)
		*deny |= v->exec_deny;
}

/* The fixed part of an enforcement record for the current task. */
/* A container runtime setting the container up: a task of a container cgroup (in scope,
 * or pending) whose root is still the host's. runc creates the namespaces and mounts the
 * container's /proc, /dev ... from inside its cgroup before it pivots into the container's
 * root; the workload never has the host's root (progs/enforce_args.bpf.c,
 * progs/enforce_sys.bpf.c). Host tasks: 0 (host-scoped rules apply to them as they are). */
static __always_inline int runtime_setup(__u64 cgid, int pending)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct dentry *root;

	if (!cfg_host_root_ino || (!pending && !bpf_map_lookup_elem(&mr_pscope, &cgid)))
		return 0;
	root = BPF_CORE_READ(t, fs, root.dentry);
	return BPF_CORE_READ(root, d_inode, i_ino) == cfg_host_root_ino &&
	       BPF_CORE_READ(root, d_sb, s_dev) == cfg_host_root_dev;
}

static __always_inline void put_u64(__u8 *dst, __u64 v)
{
	__builtin_memcpy(dst, &v, sizeof(v));
}

/* A record's tail, then the record out: path2 (h->k2.path, len2 bytes) after the len1
 * bytes of path already in ev->data, both lengths and the header. A record larger than
 * the scratch buffer is not sent (cannot happen with the masks below). */
static __always_inline void emit_paths(struct mr_pheap_buf *h, struct mr_enforce *ev,
				       __u32 len1, __u32 len2)
{
	__u32 size;

	if (len2)
		bpf_probe_read_kernel(&ev->data[len1 & MR_HALF_MASK], len2 & (MR_PATH_KEY - 1),
				      h->k2.path);
	ev->path_len = len1;
	ev->path2_len = len2 & (MR_PATH_KEY - 1);
	size = sizeof(*ev) + (len1 & MR_HALF_MASK) + (len2 & (MR_PATH_KEY - 1));
	hdr_init(&ev->hdr, MR_OP_ENFORCE, size);
	if (size <= sizeof(h->rec))
		emit_now(ev, size);
}

static __always_inline void enf_init(struct mr_enforce *ev, __u16 kind, __u16 action,
				     __u64 policies, __u64 enforced)
{
	proc_fill_current(&ev->proc);
	ev->policies = policies;
	ev->enforced = enforced;
	ev->kind = kind;
	ev->action = action;
	ev->arg = 0;
	ev->family = 0;
	ev->port = 0;
	ev->path_len = 0;
	ev->path2_len = 0;
	__builtin_memset(ev->addr, 0, sizeof(ev->addr));
}

/* (hit, enforced) -> action: enforce-mode slots act, else monitor-mode ones would. */
static __always_inline __u16 action_of(__u64 enforced, __u16 acting)
{
	return enforced ? acting : MR_EA_WOULD_BLOCK;
}
