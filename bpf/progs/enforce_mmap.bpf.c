// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Exec rules however the code gets mapped (issue 13): exec deny and drift also hold when a
 * file's code is mapped executable without an exec of it (the dynamic loader run as a
 * program, `ld.so /usr/bin/head`; dlopen; LD_PRELOAD; mmap(PROT_READ) then mprotect
 * (PROT_EXEC)), and deny, allow-list and drift hold for a script run directly (`#!`).
 *
 * One check (mr_map_check): the mapped file's resolved path against mr_pexec (deny only: an
 * allow-list does not apply to mappings, every program maps its libraries; it applies to
 * scripts, which the kernel execs) and drift (is_drift). Records are MR_EK_EXEC /
 * MR_EK_DRIFT with arg = MR_EX_* saying how the code was reached.
 *
 * LSM tier: lsm/mmap_file and lsm/file_mprotect (every VMA of the range) return -EPERM;
 * nothing is mapped. Scripts need nothing here: bprm_check_security already runs once on
 * the script file (progs/enforce_exec.bpf.c).
 *
 * Kill tier (attached only while an exec rule is live, agent/policy/programs.py):
 *  - sys_enter of mmap with PROT_EXEC on a file descriptor, and of mprotect / pkey_mprotect
 *    adding PROT_EXEC (PROT_READ counts as PROT_EXEC under personality READ_IMPLIES_EXEC) (each VMA of the range, bpf_find_vma, up to MR_VMA_MAX): SIGKILL is
 *    sent before the call runs; the call then creates the mapping and the task dies on its
 *    way back to user space: no instruction of the mapped file runs.
 *  - scripts: at sched_process_exec bprm->file is already the interpreter and the script's
 *    file is gone. When the exec went through an interpreter round (bprm->interp !=
 *    bprm->filename) the name handed to the interpreter is kept (mr_pscript); the first
 *    open/openat/openat2 of exactly that name by the process is checked at sys_exit on
 *    the file it opened, and the task killed before it returns: the interpreter never
 *    reads a byte of it. What runs before: the interpreter's own start-up (an image binary,
 *    itself checked at exec).
 * Not seen on the kill tier: shmat(SHM_EXEC), mappings made through io_uring (none exist).
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../maps/script.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define EPERM 1
#define PROT_EXEC 0x4
#define PROT_READ 0x1
#define MAP_ANONYMOUS 0x20
#define READ_IMPLIES_EXEC 0x0400000 /* personality(2): PROT_READ mappings get PROT_EXEC */
#define MR_VMA_MAX 16 /* VMAs of one mprotect range looked at (kill tier) */

/* The path the task knows a mapping's file by. overlayfs puts its *real* file (the
 * layer's) into the VMA: up to 6.5 with the overlay path as a fake f_path (f_path is
 * right, f_inode is the layer's: inode_drift() of the path's dentry), from 6.6 as a
 * struct backing_file whose f_path is the layer's and user_path the overlay one. The
 * FMODE_BACKING bit moved between releases, so a backing file is recognised by what
 * follows the struct file: an overlay dentry with the same name as the real one. */
static __always_inline const struct path *user_path_of(struct file *f)
{
	const struct path *own = __builtin_preserve_access_index(&f->f_path);
	struct backing_file *bf;
	struct dentry *d, *rd;
	__u64 na[2] = {}, nb[2] = {};
	__u32 la, lb;

	if (!bpf_core_type_exists(struct backing_file))
		return own;
	bf = container_of(f, struct backing_file, file);
	d = BPF_CORE_READ(bf, user_path.dentry);
	if (!d || BPF_CORE_READ(d, d_sb, s_magic) != OVERLAYFS_SUPER_MAGIC)
		return own;
	rd = BPF_CORE_READ(f, f_path.dentry);
	la = BPF_CORE_READ(d, d_name.len);
	lb = BPF_CORE_READ(rd, d_name.len);
	if (la != lb || rd == d)
		return own;
	bpf_probe_read_kernel(na, sizeof(na), BPF_CORE_READ(d, d_name.name));
	bpf_probe_read_kernel(nb, sizeof(nb), BPF_CORE_READ(rd, d_name.name));
	if (la < 16) { /* compare the name only, not what follows it */
		__u64 m0 = la >= 8 ? ~0ULL : (1ULL << (la * 8)) - 1;
		__u64 m1 = la >= 8 ? (1ULL << ((la - 8) * 8)) - 1 : 0;

		na[0] &= m0; nb[0] &= m0;
		na[1] &= m1; nb[1] &= m1;
	}
	if (na[0] != nb[0] || na[1] != nb[1])
		return own;
	return __builtin_preserve_access_index(&bf->user_path);
}

/* Returns -EPERM (LSM tier, enforced), 1 (kill tier, killed), 0 otherwise. A global
 * function: the verifier checks it once, not once per caller (the mprotect loop calls it
 * MR_VMA_MAX times); the file comes in as a plain number, every read of it is a probe. */
__noinline int mr_map_check(__u64 file, __u32 via, int lsm)
{
	struct file *f = (struct file *)file;
	const struct path *up;
	struct mr_pheap_buf *h = pheap();
	struct mr_pconf *c = pconf();
	struct mr_enforce *ev;
	__u64 scope, deny = 0, allow = 0, drift = 0, hit, enf;
	__u32 off, trunc = 0, len, size;
	int pending;
	__u16 kind;

	if (!h || !c || !f || !(c->active & c->exec))
		return 0;
	scope = scope_of(c, bpf_get_current_cgroup_id(), &pending) & c->exec;
	if (!scope)
		return 0;
	up = via == MR_EX_MPROTECT ? user_path_of(f) : __builtin_preserve_access_index(&f->f_path);
	off = path_resolve(up, h->pbuf, &trunc);
	key_from_resolved(&h->k1, h->pbuf, off);
	exec_masks(&h->k1, &deny, &allow);
	exec_ident_masks(BPF_CORE_READ(up, dentry, d_inode), &deny);
	if (via == MR_EX_SCRIPT) /* a script is exec'd: the allow-list applies to it */
		deny |= c->exec_allow & ~allow;
	deny &= c->active;
	if ((c->drift & c->active) && inode_drift(BPF_CORE_READ(up, dentry, d_inode)))
		drift = c->drift & c->active;
	hit = (deny | drift) & scope;
	if (!hit)
		return 0;
	enf = hit & c->enforce;
	kind = (deny & scope) ? MR_EK_EXEC : MR_EK_DRIFT;
	if (enf && !lsm)
		bpf_send_signal(SIGKILL);
	ev = (struct mr_enforce *)h->rec;
	enf_init(ev, kind, action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED), hit, enf);
	ev->arg = via;
	{ /* the file's identity: names the rule when it was denied by another name */
		struct mr_pino_key ik;

		inode_key(&ik, BPF_CORE_READ(up, dentry, d_inode));
		__builtin_memcpy(ev->addr, &ik, sizeof(ik));
	}
	len = path_copy(ev->data, h->pbuf, off);
	ev->path_len = len;
	size = sizeof(*ev) + (len & MR_HALF_MASK);
	hdr_init(&ev->hdr, MR_OP_ENFORCE, size);
	if (size <= sizeof(h->rec))
		emit_now(ev, size);
	if (!enf)
		return 0;
	return lsm ? -EPERM : 1;
}

/* The protection the kernel will really give (mmap_prot(), do_mprotect_pkey()): with
 * READ_IMPLIES_EXEC in the task's personality, PROT_READ means PROT_EXEC too. */
static __always_inline unsigned long real_prot(unsigned long prot)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	if ((prot & PROT_READ) && (BPF_CORE_READ(t, personality) & READ_IMPLIES_EXEC))
		prot |= PROT_EXEC;
	return prot;
}

static __always_inline int exec_rules_live(void)
{
	struct mr_pconf *c = pconf();

	return c && (c->active & c->exec);
}

/* ------------------------------------------------------------------ LSM tier */

SEC("lsm/mmap_file")
int BPF_PROG(mr_lsm_mmap, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags, int ret)
{
	__u64 f = 0;

	if (ret)
		return ret;
	if (!file || !(prot & PROT_EXEC))
		return 0;
	/* a global function takes numbers, not the trusted pointer: copy it out */
	bpf_probe_read_kernel(&f, sizeof(f), &ctx[0]);
	/* a constant: the verifier checks an LSM program's return range */
	return mr_map_check(f, MR_EX_MMAP, 1) < 0 ? -EPERM : 0;
}

SEC("lsm/file_mprotect")
int BPF_PROG(mr_lsm_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot, int ret)
{
	struct file *file;

	if (ret)
		return ret;
	if (!(prot & PROT_EXEC))
		return 0;
	file = BPF_CORE_READ(vma, vm_file);
	if (!file)
		return 0;
	return mr_map_check((__u64)file, MR_EX_MPROTECT, 1) < 0 ? -EPERM : 0;
}

/* ------------------------------------------------------------------ kill tier: mappings */

SEC("tracepoint/syscalls/sys_enter_mmap")
int mr_enf_mmap(struct trace_event_raw_sys_enter *ctx)
{
	unsigned long prot = ctx->args[2], flags = ctx->args[3];
	struct file *f;

	if ((flags & MAP_ANONYMOUS) || !(real_prot(prot) & PROT_EXEC) || !exec_rules_live())
		return 0;
	f = task_fd_file((struct task_struct *)bpf_get_current_task(), (__u32)ctx->args[4]);
	if (f)
		mr_map_check((__u64)f, MR_EX_MMAP, 0);
	return 0;
}

struct mr_vma_seen {
	struct file *file;
	__u64 end;
};

static long vma_seen(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct mr_vma_seen *s = data;

	s->file = BPF_CORE_READ(vma, vm_file);
	s->end = BPF_CORE_READ(vma, vm_end);
	return 0;
}

static __always_inline int on_mprotect(unsigned long start, unsigned long len,
				       unsigned long prot)
{
	struct task_struct *task;
	struct mr_vma_seen s;
	__u64 addr = start, end = start + len;
	int i;

	if (!(real_prot(prot) & PROT_EXEC) || !exec_rules_live())
		return 0;
	task = bpf_get_current_task_btf();
	for (i = 0; i < MR_VMA_MAX && addr < end; i++) {
		s.file = 0;
		s.end = 0;
		if (bpf_find_vma(task, addr, vma_seen, &s, 0))
			break; /* a hole: mprotect fails with ENOMEM there */
		if (s.file && mr_map_check((__u64)s.file, MR_EX_MPROTECT, 0))
			break;
		if (s.end <= addr)
			break;
		addr = s.end;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mprotect")
int mr_enf_mprotect(struct trace_event_raw_sys_enter *ctx)
{
	return on_mprotect(ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_pkey_mprotect")
int mr_enf_pkeyprot(struct trace_event_raw_sys_enter *ctx)
{
	return on_mprotect(ctx->args[0], ctx->args[1], ctx->args[2]);
}

/* ------------------------------------------------------------------ kill tier: scripts */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(mr_enf_script, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	const char *interp = BPF_CORE_READ(bprm, interp);
	const char *fname = BPF_CORE_READ(bprm, filename);
	struct mr_pheap_buf *h = pheap();
	struct mr_pconf *c = pconf();
	struct mr_pscript *s;
	int pending;
	long r;

	bpf_map_delete_elem(&mr_pscript, &tgid); /* a new image: an older row is stale */
	if (interp == fname || !h || !c || !(c->active & c->exec))
		return 0;
	/* a pending cgroup (a held first exec) is decided later: keep the row, the open is
	 * checked with the scope known by then */
	if (!(scope_of(c, bpf_get_current_cgroup_id(), &pending) & c->exec) && !pending)
		return 0;
	s = (struct mr_pscript *)h->rec;
	s->start_ns = task_start_ns(task);
	s->armed_tid = 0;
	r = bpf_probe_read_kernel_str(s->name, sizeof(s->name), fname);
	if (r <= 1)
		return 0;
	s->len = r;
	bpf_map_update_elem(&mr_pscript, &tgid, s, BPF_ANY);
	return 0;
}

static __always_inline int script_open_enter(const char *uname)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct mr_pheap_buf *h;
	struct mr_pscript *s = bpf_map_lookup_elem(&mr_pscript, &tgid);
	long r;
	int i;

	if (!s || !(h = pheap()))
		return 0;
	r = bpf_probe_read_user_str(h->k2.path, MR_SCRIPT_NAME, uname);
	if (r != s->len)
		return 0;
	for (i = 0; i < MR_SCRIPT_NAME; i++) {
		if (i >= r)
			break;
		if (h->k2.path[i] != s->name[i])
			return 0;
	}
	if (s->start_ns != task_start_ns((struct task_struct *)bpf_get_current_task())) {
		bpf_map_delete_elem(&mr_pscript, &tgid); /* a reused tgid */
		return 0;
	}
	s->armed_tid = (__u32)id;
	return 0;
}

static __always_inline int script_open_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct mr_pscript *s = bpf_map_lookup_elem(&mr_pscript, &tgid);
	struct file *f;

	if (!s || s->armed_tid != (__u32)id)
		return 0;
	if (ret < 0) { /* that open failed: wait for the next one of the name */
		s->armed_tid = 0;
		return 0;
	}
	bpf_map_delete_elem(&mr_pscript, &tgid);
	f = task_fd_file((struct task_struct *)bpf_get_current_task(), ret);
	if (f)
		mr_map_check((__u64)f, MR_EX_SCRIPT, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_open")
int mr_enf_sc_open(struct trace_event_raw_sys_enter *ctx)
{
	return script_open_enter((const char *)ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int mr_enf_sc_oat(struct trace_event_raw_sys_enter *ctx)
{
	return script_open_enter((const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int mr_enf_sc_oat2(struct trace_event_raw_sys_enter *ctx)
{
	return script_open_enter((const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_exit_open")
int mr_enf_sx_open(struct trace_event_raw_sys_exit *ctx)
{
	return script_open_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int mr_enf_sx_oat(struct trace_event_raw_sys_exit *ctx)
{
	return script_open_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int mr_enf_sx_oat2(struct trace_event_raw_sys_exit *ctx)
{
	return script_open_exit(ctx->ret);
}
