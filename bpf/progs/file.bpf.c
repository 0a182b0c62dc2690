// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * File opens of watched paths (mr_watch), filtered in the kernel so `find /` stays here.
 *
 * sys_enter: absolute path -> LPM lookup on the string as written (cheap; a miss ends it
 * there); relative path -> remembered, resolved at exit. sys_exit: on success the path is
 * resolved from the new fd's dentry (symlinks and `..` resolved, as the task sees it) and,
 * for relative opens, looked up then; a failed open of a watched absolute path is reported
 * with the path as written and the errno. /proc/<pid>/mem is matched by its own rule.
 *
 * Relative opens cost what absolute ones cost when they cannot hit a watched path: the
 * verdict "no file directly in this directory is watched" is cached per (mount, parent
 * dentry) of the file actually opened (mr_dircache), so chdir, fchdir, a dirfd, symlinks
 * and ".." change nothing: the key is where the file is, not how it was named. An entry
 * counts only at the generation it was made in: renames, rmdir, mounts, pivot_root,
 * unshare and setns (by syscall or io_uring) bump mr_pathgen when they start and end, and
 * no entry counts while one is in flight. Only local filesystems are cached (others can
 * rename behind our back); a miss walks and looks up as before.
 * What an open keeps from enter to exit (the path pointer, flags, why it may be reported)
 * lives in the task's own storage (mr_open_ts) where the kernel allows it, else in a hash
 * by thread id; an absolute path nobody watches keeps nothing, and its exit only finds
 * that out.
 * Not seen: opens through io_uring (no syscall) and absolute paths whose watched target
 * is reached only through a symlink outside the watched set.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/files.h"
#include "../maps/agg.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/sysobs.h"

#define PROC_SUPER_MAGIC 0x9fa0

/* Watched when the longest stored prefix has the report bit (0 entries are exceptions). */
static __always_inline int watch_lookup(struct mr_watch_key *k, __u32 len)
{
	__u32 *v;

	k->prefixlen = len * 8;
	v = bpf_map_lookup_elem(&mr_watch, k);
	return v && (*v & 1);
}

/* "/proc/<something>/mem" as written */
static __always_inline int is_proc_mem(const char *p, __u32 len)
{
	if (!cfg_watch_proc_mem || len < 10 || len >= MR_WATCH_LEN)
		return 0;
	return p[0] == '/' && p[1] == 'p' && p[2] == 'r' && p[3] == 'o' && p[4] == 'c' &&
	       p[5] == '/' && p[(len - 4) & (MR_WATCH_LEN - 1)] == '/' &&
	       p[(len - 3) & (MR_WATCH_LEN - 1)] == 'm' && p[(len - 2) & (MR_WATCH_LEN - 1)] == 'e' &&
	       p[(len - 1) & (MR_WATCH_LEN - 1)] == 'm';
}

/* Filesystems whose directories only move by syscalls we see: ext4, xfs, btrfs, tmpfs,
 * overlayfs. A remote or kernel-managed one (nfs, proc, sysfs, cgroupfs) is walked. */
static __always_inline int dircache_fs(struct super_block *sb)
{
	unsigned long m = BPF_CORE_READ(sb, s_magic);

	return m == 0xEF53 || m == 0x58465342 || m == 0x9123683E || m == 0x01021994 ||
	       m == 0x794c7630;
}

/* The generation now (the kernel's path changes plus the agent's watch-set changes), or ~0
 * while a path-changing call is in flight (nothing counts then). */
static __always_inline __u64 pathgen_now(void)
{
	__u32 zero = 0, one = 1;
	struct mr_pathgen *g = bpf_map_lookup_elem(&mr_pathgen, &zero);
	struct mr_pathgen *w = bpf_map_lookup_elem(&mr_pathgen, &one);
	__u64 gen;

	if (!g || !w)
		return ~0ULL;
	gen = *(volatile __u64 *)&g->gen + (*(volatile __u64 *)&w->gen << 40);
	if (*(volatile __s64 *)&g->inflight != 0)
		return ~0ULL;
	return gen;
}

/* sb: p's super block when the caller has it (one read less), else NULL */
static __always_inline void dirent_fill(struct mr_dirent *e, struct dentry *p,
					struct vfsmount *vfsmnt, struct super_block *sb)
{
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);

	if (!sb)
		sb = BPF_CORE_READ(p, d_sb);
	e->hash_len = BPF_CORE_READ(p, d_name.hash_len);
	e->parent = (__u64)BPF_CORE_READ(p, d_parent);
	e->ino = BPF_CORE_READ(p, d_inode, i_ino);
	e->dev = BPF_CORE_READ(sb, s_dev);
	if (bpf_core_field_exists(mnt->mnt_id_unique))
		e->mnt_uid = BPF_CORE_READ(mnt, mnt_id_unique);
	else
		e->mnt_uid = BPF_CORE_READ(mnt, mnt_id);
	e->mnt_ns = (__u64)BPF_CORE_READ(mnt, mnt_ns);
	e->pad = 0;
}

/* Where the parent directory of a just opened file can be cached: (mount, parent), or 0
 * when its path is not "parent's path + name" (a mount root, a pseudo file). */
static __always_inline int dircache_key(struct file *f, struct mr_dirkey *key,
					struct dentry **parent, struct super_block **sb)
{
	struct path fp;
	struct dentry *d, *p;
	struct vfsmount *m;

	BPF_CORE_READ_INTO(&fp, f, f_path); /* mount and dentry in one read */
	d = fp.dentry;
	m = fp.mnt;
	p = BPF_CORE_READ(d, d_parent);
	if (p == d || d == BPF_CORE_READ(m, mnt_root))
		return 0;
	*sb = BPF_CORE_READ(p, d_sb);
	if (!dircache_fs(*sb))
		return 0;
	key->mnt = (__u64)m;
	key->dentry = (__u64)p;
	*parent = p;
	return 1;
}

/* A hit: the directory was cached as unwatched at the current generation, and is still
 * the same directory. */
static __always_inline int dircache_hit(struct mr_dirkey *key, struct dentry *p,
					struct super_block *sb)
{
	struct mr_dirent *v = bpf_map_lookup_elem(&mr_dircache, key);
	struct mr_dirent now = {};
	__u64 gen;

	if (!v)
		return 0;
	gen = pathgen_now();
	if (gen == ~0ULL || v->gen != gen)
		return 0;
	dirent_fill(&now, p, (struct vfsmount *)key->mnt, sb);
	return now.hash_len == v->hash_len && now.parent == v->parent && now.ino == v->ino &&
	       now.dev == v->dev && now.mnt_uid == v->mnt_uid && now.mnt_ns == v->mnt_ns;
}

/* After a walk that began at generation gen: k->path holds the resolved path, dlen bytes
 * of it the directory with its trailing '/'. Unwatched when neither it (or a prefix of
 * it) is watched nor any watched entry lies below it. */
static __always_inline void dircache_put(struct mr_dirkey *key, struct dentry *p, __u64 gen,
					 struct mr_watch_key *k, __u32 dlen)
{
	struct mr_dirent e = {};
	__u32 *anc;

	if (gen == ~0ULL || dlen == 0 || dlen >= MR_WATCH_LEN - 1)
		return;
	k->prefixlen = dlen * 8;
	if (watch_lookup(k, dlen))
		return;
	anc = bpf_map_lookup_elem(&mr_watch_anc, k);
	if (anc && *anc == dlen)
		return;
	dirent_fill(&e, p, (struct vfsmount *)key->mnt, NULL);
	e.gen = gen;
	bpf_map_update_elem(&mr_dircache, key, &e, BPF_ANY);
}

/* The cache's steps run as bpf_loop callbacks: the verifier checks each once, and the
 * open's exit (already large: the walk, the record, the release_agent detection) is not
 * verified again for every outcome of the cache. What a step leaves for the next is kept
 * in per-CPU state (mr_dcop, whose contents the verifier does not track) tagged with its
 * task and file: where syscall tracepoints are preemptible, another task's open can run
 * between two steps on the same CPU, and a step that finds another task's tag does
 * nothing. The hit itself is bpf_loop's return value (1: hit), never read back from the
 * shared state. */
#define MR_DC_NONE 0 /* not cacheable */
#define MR_DC_MISS 1 /* cacheable, not cached: put after the walk */

struct mr_dc_arg {
	__u64 f;
	__u32 dlen;
	__u32 pad;
};

static __always_inline struct mr_dircache_op *dcop(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mr_dcop, &zero);
}

/* i == 0: decide; stop (bpf_loop returns 1) on a hit, else go on to i == 1 (returns 2). */
static long dircache_check_cb(__u32 i, void *ctx)
{
	struct mr_dc_arg *arg = ctx;
	struct mr_dircache_op *op;
	struct dentry *parent = NULL;
	struct super_block *sb = NULL;
	struct mr_dirkey key = {};
	__u64 gen;

	if (i)
		return 1;
	op = dcop();
	if (!op)
		return 0;
	op->owner = bpf_get_current_pid_tgid();
	asm volatile("" ::: "memory");
	op->state = MR_DC_NONE;
	if (!dircache_key((struct file *)arg->f, &key, &parent, &sb))
		return 0;
	if (dircache_hit(&key, parent, sb)) {
		stat_inc(MR_STAT_DIRCACHE_HIT);
		return 1;
	}
	stat_inc(MR_STAT_DIRCACHE_MISS);
	gen = pathgen_now(); /* before the walk: a rename during it makes it stale */
	op->f = arg->f;
	op->key = key;
	op->parent = (__u64)parent;
	op->gen = gen;
	asm volatile("" ::: "memory");
	op->state = MR_DC_MISS;
	return 0;
}

static long dircache_put_cb(__u32 i, void *ctx)
{
	struct mr_dc_arg *arg = ctx;
	struct mr_dircache_op *op = dcop(), c;
	struct mr_watch_key *k;
	__u64 me = bpf_get_current_pid_tgid();
	__u32 zero = 0;

	if (!op)
		return 1;
	__builtin_memcpy(&c, op, sizeof(c));
	asm volatile("" ::: "memory");
	/* copied, then checked again: another task's step in between changed the owner */
	if (*(volatile __u64 *)&op->owner != me || c.owner != me || c.f != arg->f ||
	    c.state != MR_DC_MISS)
		return 1;
	k = bpf_map_lookup_elem(&mr_wkey, &zero);
	if (k)
		dircache_put(&c.key, (struct dentry *)c.parent, c.gen, k, arg->dlen);
	return 1;
}

/* The open in flight, kept from sys_enter to sys_exit (maps/files.h): in the task's own
 * storage where syscall tracepoints may use it (cfg_open_ts), else, or when the storage
 * cannot be made, in mr_open_args by thread id. Only opens that may be reported are kept:
 * an absolute path nobody watches leaves nothing, and its exit finds nothing. */
static __always_inline void inflight_put(const struct mr_open_inflight *in)
{
	struct mr_open_inflight *s;
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), zero = 0;
	__s64 *n;

	if (!cfg_open_ts) {
		bpf_map_update_elem(&mr_open_args, &tid, in, BPF_ANY);
		return;
	}
	s = bpf_task_storage_get(&mr_open_ts, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s) {
		s->fname = in->fname;
		s->flags = in->flags;
		s->matched = in->matched;
		return;
	}
	/* counted only when new: mr_open_fb[0] is how many entries the hash holds */
	if (!bpf_map_update_elem(&mr_open_args, &tid, in, BPF_NOEXIST)) {
		n = bpf_map_lookup_elem(&mr_open_fb, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	} else {
		bpf_map_update_elem(&mr_open_args, &tid, in, BPF_ANY);
	}
}

/* A copy whose fields the verifier does not track (as if read from the map at each use):
 * copied field by field, the exit's later tests of them became known branches and
 * mr_exit_openat went over the verifier's 1M instructions. */
static __always_inline void inflight_copy(struct mr_open_inflight *out,
					  const struct mr_open_inflight *s)
{
	bpf_probe_read_kernel(out, sizeof(*out), s);
}

/* Takes this task's open in flight into *out (and forgets it); 0 when there is none. */
static __always_inline int inflight_take(struct mr_open_inflight *out)
{
	struct mr_open_inflight *s;
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), zero = 0;
	__s64 *n = NULL;

	if (cfg_open_ts) {
		s = bpf_task_storage_get(&mr_open_ts, bpf_get_current_task_btf(), 0, 0);
		if (s && s->matched) {
			inflight_copy(out, s);
			s->matched = 0;
			return 1;
		}
		n = bpf_map_lookup_elem(&mr_open_fb, &zero);
		if (!n || *(volatile __s64 *)n <= 0)
			return 0;
	}
	s = bpf_map_lookup_elem(&mr_open_args, &tid);
	if (!s)
		return 0;
	inflight_copy(out, s);
	if (!bpf_map_delete_elem(&mr_open_args, &tid) && n)
		__sync_fetch_and_sub(n, 1);
	return 1;
}

/* nr: NR_OPEN / NR_OPENAT when a write to release_agent is a detection record (sysobs.h),
 * 0 for the other open calls. */
static __always_inline int on_enter(struct trace_event_raw_sys_enter *ctx, const char *fname,
				    __u32 flags, __u32 nr)
{
	__u32 zero = 0;
	struct mr_watch_key *k;
	struct mr_open_inflight in = {};
	long r;

	if (is_self())
		return 0;
	k = bpf_map_lookup_elem(&mr_wkey, &zero);
	if (!k)
		return 0;
	r = bpf_probe_read_user_str(k->path, sizeof(k->path), fname);
	if (r <= 1)
		return 0;
	if (nr && (flags & 3) && is_release_agent(k->path, r - 1)) {
		save(nr, ctx);
		in.matched |= MR_OI_SYSOBS;
	}
	if (k->path[0] == '/') {
		if (watch_lookup(k, r - 1) || is_proc_mem(k->path, r - 1))
			in.matched |= MR_OI_MATCHED;
		else if (!in.matched)
			return 0;
	} else {
		in.matched |= MR_OI_RESOLVE;
	}
	in.fname = (__u64)fname;
	in.flags = flags;
	inflight_put(&in);
	return 0;
}

static __always_inline int file_is_proc_mem(struct file *f)
{
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	char n[4] = {};

	if (!cfg_watch_proc_mem || BPF_CORE_READ(d, d_sb, s_magic) != PROC_SUPER_MAGIC ||
	    BPF_CORE_READ(d, d_name.len) != 3)
		return 0;
	bpf_probe_read_kernel(n, 3, name);
	return n[0] == 'm' && n[1] == 'e' && n[2] == 'm';
}

static __always_inline int on_exit(long ret)
{
	__u32 trunc = 0, priv = 0, off, len, zero = 0;
	struct mr_open_inflight inf, *in = &inf;
	struct mr_open *ev;
	struct mr_watch_key *k;
	struct task_struct *task;
	struct file *f;
	struct mr_dc_arg dca = {};
	__u64 seq = 0;
	char *pbuf;
	long r;

	if (!inflight_take(in))
		return 0;
	if (in->matched & MR_OI_SYSOBS)
		sysobs_exit(ret);
	if (!(in->matched & (MR_OI_MATCHED | MR_OI_RESOLVE)))
		goto out;
	ev = heap_slot(0);
	pbuf = heap_slot(1);
	if (ev) /* room for a summary's header before it (progs/agg.bpf.c) */
		ev = (struct mr_open *)((char *)ev + sizeof(struct mr_repeat));
	k = bpf_map_lookup_elem(&mr_wkey, &zero);
	if (!ev || !pbuf || !k)
		goto out;

	/* from here on this exit writes ev (mr_heap[0]): in flight for the aggregation's
	 * check (maps/agg.h) until out: */
	seq = mr_agg_begin();
	ev->flags = in->flags;
	ev->ret = ret;
	ev->pflags = 0;
	task = (struct task_struct *)bpf_get_current_task();
	if (ret >= 0) {
		f = task_fd_file(task, ret);
		if (!f)
			goto out;
		dca.f = (__u64)f;
		if (!(in->matched & MR_OI_MATCHED) && bpf_loop(2, dircache_check_cb, &dca, 0) == 1)
			goto out; /* relative, in a directory with nothing watched */
		off = path_resolve_root(__builtin_preserve_access_index(&f->f_path), pbuf, &trunc,
					&priv);
		if (priv)
			ev->pflags |= MR_F_ROOT_PRIVATE;
		if (trunc) {
			ev->pflags |= MR_F_PATH_TRUNC;
			stat_inc(MR_STAT_PATH_TRUNC);
		}
		if (!(in->matched & MR_OI_MATCHED)) {
			/* relative open: decide on the resolved path */
			len = (MR_HALF - 1 - off) & MR_HALF_MASK;
			if (len >= MR_WATCH_LEN - 1) {
				len = MR_WATCH_LEN - 1;
				dca.f = 0; /* the directory may not fit the key: no put */
			}
			bpf_probe_read_kernel(k->path, len & (MR_WATCH_LEN - 1),
					      &pbuf[off & MR_HALF_MASK]);
			if (!watch_lookup(k, len)) {
				if (dca.f && !trunc) {
					dca.dlen = len - (BPF_CORE_READ(f, f_path.dentry,
									d_name.len) & MR_NAME_MAX);
					bpf_loop(1, dircache_put_cb, &dca, 0);
				}
				if (!file_is_proc_mem(f))
					goto out;
			}
		}
		len = path_copy(ev->data, pbuf, off);
	} else {
		if (!(in->matched & MR_OI_MATCHED))
			goto out; /* a failed relative open cannot be placed */
		r = bpf_probe_read_user_str(ev->data, MR_HALF, (void *)in->fname);
		len = r > 0 ? (r - 1) & MR_HALF_MASK : 0;
		ev->pflags |= MR_F_PATH_RAW;
	}
	ev->path_len = len;
	ev->pad = 0;
	__builtin_memset(ev->proc.comm, 0, sizeof(ev->proc.comm)); /* all of it is the key */
	proc_fill(&ev->proc, task);
	r = len & MR_HALF_MASK;
	len = sizeof(*ev) + r;
	hdr_init(&ev->hdr, MR_OP_OPEN, len);
	if (!mr_agg_open(r, seq)) /* 1: a repeat, counted (progs/agg.bpf.c) */
		emit(ev, len);
out:
	if (seq)
		mr_agg_end();
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int mr_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx, (const char *)ctx->args[1], ctx->args[2], NR_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int mr_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_open")
int mr_enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx, (const char *)ctx->args[0], ctx->args[1], NR_OPEN);
}

SEC("tracepoint/syscalls/sys_exit_open")
int mr_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int mr_enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	/* creat(path, mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode) */
	return on_enter(ctx, (const char *)ctx->args[0], 01 | 0100 | 01000, 0);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int mr_exit_creat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int mr_enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return on_enter(ctx, (const char *)ctx->args[1], how.flags, 0);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int mr_exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}
