// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * File enforcement: deny / monitor by path or prefix and access (mr_pfile).
 *
 * lsm/file_open returns -EPERM where BPF LSM is usable: the open fails. Elsewhere the
 * successful open is checked at sys_exit of open/openat/openat2/creat, on the path
 * resolved from the new fd (symlinks, "..", relative and dirfd-relative paths all end up
 * as the file that was really opened, as the task sees it), and the task is killed with
 * SIGKILL before it returns to user space: it never reads a byte through that fd, but
 * the open itself completed (O_CREAT / O_TRUNC took effect). Access is the file's f_mode
 * (FMODE_READ / FMODE_WRITE). Not seen on the fallback tier: opens through io_uring.
 *
 * A file is matched by its resolved path (mr_pfile) and by its identity (mr_pino: device
 * and inode), so a rule holds however the file is named: a hard link, a renamed file, a
 * bind mount, a chroot. A file opened by a name a deny rule covers is added to mr_pino at
 * once (the agent adds the ones nobody opened yet, agent/policy/identity.py).
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define EPERM 1

static __always_inline int file_check(struct file *f, int lsm)
{
	struct mr_pheap_buf *h = pheap();
	struct mr_pconf *c = pconf();
	struct mr_pfile_val *v;
	struct mr_pino_val *vi;
	struct mr_pino_key ik;
	struct mr_enforce *ev;
	__u64 cgid, scope, deny = 0, mon = 0, hit, enf;
	__u32 off, trunc = 0, len, size, mode;
	int pending;

	if (!h || !c || !(c->active & c->files))
		return 0;
	cgid = bpf_get_current_cgroup_id();
	scope = scope_of(c, cgid, &pending) & c->files;
	if (!scope)
		return 0;
	mode = BPF_CORE_READ(f, f_mode) & (FMODE_READ | FMODE_WRITE);
	if (!mode)
		return 0;
	off = path_resolve(__builtin_preserve_access_index(&f->f_path), h->pbuf, &trunc);
	key_from_resolved(&h->k1, h->pbuf, off);
	v = bpf_map_lookup_elem(&mr_pfile, &h->k1);
	inode_key(&ik, BPF_CORE_READ(f, f_inode));
	vi = bpf_map_lookup_elem(&mr_pino, &ik);
	if (v) {
		if (!vi && (v->deny_read | v->deny_write)) { /* full: the agent's rows stay */
			struct mr_pino_val nv = {v->deny_read, v->deny_write, v->mon_read,
						 v->mon_write, 0};

			bpf_map_update_elem(&mr_pino, &ik, &nv, BPF_NOEXIST);
		}
		if (mode & FMODE_READ) {
			deny |= v->deny_read;
			mon |= v->mon_read;
		}
		if (mode & FMODE_WRITE) {
			deny |= v->deny_write;
			mon |= v->mon_write;
		}
	}
	if (vi) {
		if (mode & FMODE_READ) {
			deny |= vi->deny_read;
			mon |= vi->mon_read;
		}
		if (mode & FMODE_WRITE) {
			deny |= vi->deny_write;
			mon |= vi->mon_write;
		}
	}
	hit = (deny | mon) & scope;
	if (!hit)
		return 0;
	enf = deny & scope & c->enforce;
	if (enf && !lsm)
		bpf_send_signal(SIGKILL);
	ev = (struct mr_enforce *)h->rec;
	enf_init(ev, MR_EK_FILE, action_of(enf, lsm ? MR_EA_BLOCKED : MR_EA_KILLED), hit, enf);
	ev->arg = mode;
	if (vi) { /* say which file it is: the name used may be one no rule names */
		ev->arg |= MR_EF_IDENT;
		__builtin_memcpy(ev->addr, &ik, sizeof(ik));
	}
	len = path_copy(ev->data, h->pbuf, off);
	ev->path_len = len;
	size = sizeof(*ev) + (len & MR_HALF_MASK);
	hdr_init(&ev->hdr, MR_OP_ENFORCE, size);
	if (size <= sizeof(h->rec))
		emit_now(ev, size);
	return (enf && lsm) ? -EPERM : 0;
}

static __always_inline int on_open_exit(long ret)
{
	struct mr_pconf *c = pconf();
	struct file *f;

	/* no file rule active: done before touching the fd table (every open pays this) */
	if (ret < 0 || !c || !(c->active & c->files))
		return 0;
	f = task_fd_file((struct task_struct *)bpf_get_current_task(), ret);
	if (f)
		file_check(f, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int mr_enf_openat(struct trace_event_raw_sys_exit *ctx) { return on_open_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_open")
int mr_enf_open(struct trace_event_raw_sys_exit *ctx) { return on_open_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_openat2")
int mr_enf_openat2(struct trace_event_raw_sys_exit *ctx) { return on_open_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_creat")
int mr_enf_creat(struct trace_event_raw_sys_exit *ctx) { return on_open_exit(ctx->ret); }

SEC("lsm/file_open")
int BPF_PROG(mr_lsm_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	return file_check(file, 1);
}
