/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Path resolution without bpf_d_path (not allowed from tracepoints): walk dentries up to
 * the root of the task's mount namespace, crossing mount points, writing names backwards
 * into the first half of a scratch buffer. The result is the path in the task's mount
 * namespace: a container's /etc/shadow (its root is its namespace's root after
 * pivot_root), not the host's overlay path; and for a chrooted task the path from its
 * namespace's root, not from the chroot (a host process chrooted into /srv/jail that opens
 * /etc/passwd is seen opening /srv/jail/etc/passwd, so host rules neither fire on a
 * chroot's own /etc nor miss the host's files; d_path would stop at the chroot). Deleted
 * files keep their last name; a walk deeper than MR_PATH_DEPTH is cut and flagged.
 *
 * path_resolve_root also says whether the walk ended on the host's root filesystem (the
 * root of the last mount crossed before the namespace's top is the host's root directory,
 * cfg_path_root_*): 0 for a container's rootfs, and for a host task that pivoted into a
 * private root (dockerd's layer extraction, an image builder), whose "/etc/passwd" is not
 * the host's. A chroot alone does not count: the walk goes past it to the host's root.
 */
#pragma once

#define MR_PATH_DEPTH 64 /* dentries and mount crossings */
#define MR_NAME_MAX 255

struct mr_path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct mount *mnt_parent;
	struct dentry *root;	/* root of the last mount crossed (or of the top) */
	char *buf;
	__u32 off;
	__u32 trunc;
};

/* One step of the walk. Returns 1 to stop. track_root: also note the root of each mount
 * crossed (path_resolve_root only: the extra state made the verifier's walk of the largest
 * enforcement programs explode). */
static __always_inline long path_step_impl(struct mr_path_walk *w, const int track_root)
{
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	struct qstr name;
	__u32 len, off;

	if (dentry == mnt_root || dentry == parent) {
		if (dentry != mnt_root) {
			/* a pseudo file (memfd, anon inode, pipe): its own parent; report its name
			 * as /proc/<pid>/exe would, e.g. "/memfd:x (deleted)" shows as "/memfd:x" */
			if (w->off == MR_HALF - 1) {
				name = BPF_CORE_READ(dentry, d_name);
				len = name.len & MR_NAME_MAX;
				off = w->off - len;
				bpf_probe_read_kernel(&w->buf[off & MR_HALF_MASK], len, name.name);
				off -= 1;
				w->buf[off & MR_HALF_MASK] = '/';
				w->off = off;
			}
			w->trunc = 0;
			return 1;
		}
		if (mnt == w->mnt_parent) {
			w->trunc = 0; /* the namespace's root mount: its own parent */
			if (track_root && !w->root)
				w->root = dentry;
			return 1;
		}
		if (track_root)
			w->root = dentry;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		mnt = w->mnt_parent;
		w->mnt = mnt;
		w->mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		w->vfsmnt = __builtin_preserve_access_index(&mnt->mnt);
		return 0;
	}
	name = BPF_CORE_READ(dentry, d_name);
	len = name.len & MR_NAME_MAX;
	off = w->off;
	if (len + 1 > off)
		return 1;
	off -= len;
	bpf_probe_read_kernel(&w->buf[off & MR_HALF_MASK], len, name.name);
	off -= 1;
	w->buf[off & MR_HALF_MASK] = '/';
	w->off = off;
	w->dentry = parent;
	return 0;
}

/* bpf_loop callbacks (the verifier checks each once, not per step) */
static long path_step(__u32 i, void *ctx)
{
	return path_step_impl(ctx, 0);
}

static long path_step_root(__u32 i, void *ctx)
{
	return path_step_impl(ctx, 1);
}

static __always_inline void path_walk_init(struct mr_path_walk *w, const struct path *path,
					   char *buf)
{
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);

	w->dentry = BPF_CORE_READ(path, dentry);
	w->vfsmnt = vfsmnt;
	w->mnt = mnt;
	w->mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
	w->buf = buf;
	w->off = MR_HALF - 1;
	w->trunc = 1;
	buf[MR_HALF - 1] = 0;
}

/* The offset of the resolved string in buf ("/" for the root itself). */
static __always_inline __u32 path_walk_end(struct mr_path_walk *w, char *buf)
{
	if (w->off == MR_HALF - 1) { /* the root itself */
		w->off -= 1;
		buf[w->off & MR_HALF_MASK] = '/';
	}
	return w->off & MR_HALF_MASK;
}

/* Resolves path into buf (size >= 2 * MR_HALF). Returns the offset of the string start in
 * buf; the string ends at buf[MR_HALF - 1] (a NUL). *trunc set when the walk was cut;
 * *private set when the walk ended on a root other than the host's (see the top). */
static __always_inline __u32 path_resolve_root(const struct path *path, char *buf,
					       __u32 *trunc, __u32 *private)
{
	struct mr_path_walk w = {};
	struct dentry *root;

	path_walk_init(&w, path, buf);
	bpf_loop(MR_PATH_DEPTH, path_step_root, &w, 0);
	*trunc = w.trunc;
	root = w.root;
	*private = cfg_path_root_ino && root && !w.trunc &&
		   (BPF_CORE_READ(root, d_inode, i_ino) != cfg_path_root_ino ||
		    BPF_CORE_READ(root, d_sb, s_dev) != cfg_path_root_dev);
	return path_walk_end(&w, buf);
}

static __always_inline __u32 path_resolve(const struct path *path, char *buf, __u32 *trunc)
{
	struct mr_path_walk w = {};

	path_walk_init(&w, path, buf);
	bpf_loop(MR_PATH_DEPTH, path_step, &w, 0);
	*trunc = w.trunc;
	return path_walk_end(&w, buf);
}

/* Copies the resolved string (without NUL) to dst; returns its length. */
static __always_inline __u32 path_copy(char *dst, const char *buf, __u32 off)
{
	__u32 len = (MR_HALF - 1 - off) & MR_HALF_MASK;

	bpf_probe_read_kernel(dst, len, &buf[off & MR_HALF_MASK]);
	return len;
}
