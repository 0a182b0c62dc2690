/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* File-open filtering.
 *   mr_watch     LPM trie: path prefix -> u32 flags (1 = report). Writer: the agent at start
 *                (agent/bpf/watch.py, defaults + --watch); reader: progs/file.bpf.c. A path
 *                is reported when the longest stored prefix of it is present. Directory
 *                prefixes are stored with their trailing '/'.
 *   mr_open_ts   task storage: the open in flight of this task (between sys_enter and
 *                sys_exit; `matched` 0 when none), where syscall tracepoints may use task
 *                storage (cfg_open_ts, probed; 6.1 and 6.18 do): a pointer into the task, no hash insert or
 *                delete per open. Written at enter, read and cleared at exit
 *                (progs/file.bpf.c).
 *   mr_open_args hash tid -> the open in flight, where they may not, and when the
 *                task's storage could not be made (no memory, or another task storage
 *                call in progress on this CPU); mr_open_fb[0] counts its entries, so an
 *                exit looks in it only while it holds any.
 *   mr_watch_anc LPM trie: every directory ("/", "/var/", ...) that is a proper prefix of an
 *                mr_watch entry, value = its length in bytes (a lookup hits a directory
 *                exactly when the value equals the looked-up length). Writer: the agent,
 *                with mr_watch (agent/bpf/watch.py); reader: progs/file.bpf.c.
 *   mr_dircache  LRU hash (mount, parent dentry) -> "no file directly in this directory can
 *                be watched", for relative opens: a hit skips the path walk. Written and
 *                read by progs/file.bpf.c; an entry counts only while its generation is
 *                mr_pathgen's and the directory still looks the same (struct mr_dirent).
 *   mr_pathgen   ARRAY[2]: [0] the generation of every path (bumped when a rename, rmdir,
 *                mount, umount, pivot_root, unshare or setns starts and when it ends, by
 *                io_uring renames and unlinks at submission and completion) and how many
 *                such calls are in flight (no cache hit while one is: a directory may be
 *                moving); writer progs/pathgen.bpf.c. [1].gen: the watch set's
 *                generation, bumped by the agent after it rewrote mr_watch
 *                (agent/bpf/watch.py; a separate entry, so that user space never
 *                rewrites the kernel's counters).
 *   mr_dcop      per-CPU scratch of one relative open's cache steps, tagged with its task
 *                (progs/file.bpf.c).
 *   mr_pathops   hash (tid, or io_uring request) -> 1 while its path-changing call is in
 *                flight, so that only calls whose start was counted are uncounted. */
#pragma once

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct mr_watch_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mr_watch SEC(".maps") __weak;

#define MR_OI_MATCHED 1 /* the absolute path as written matched mr_watch */
#define MR_OI_RESOLVE 2 /* relative: resolve from the new fd at exit, then look up */
#define MR_OI_SYSOBS 4  /* a write to release_agent: a detection record (lib/sysobs.h) */

struct mr_open_inflight {
	__u64 fname;  /* user pointer */
	__u32 flags;
	__u32 matched; /* MR_OI_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct mr_open_inflight);
} mr_open_args SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mr_open_inflight);
} mr_open_ts SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} mr_open_fb SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct mr_watch_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mr_watch_anc SEC(".maps") __weak;

struct mr_dirkey {
	__u64 mnt;    /* struct vfsmount * */
	__u64 dentry; /* the parent directory's dentry */
};

/* What must still hold for an entry to count: the same generation, and the directory the
 * same one (a freed dentry or mount reused for another one differs in one of these). */
struct mr_dirent {
	__u64 gen;
	__u64 hash_len;  /* d_name.hash_len: name and its hash */
	__u64 parent;    /* d_parent */
	__u64 ino;
	__u64 mnt_uid;   /* mnt_id_unique (6.8+), else mnt_id */
	__u64 mnt_ns;    /* the mount's namespace */
	__u32 dev;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct mr_dirkey);
	__type(value, struct mr_dirent);
} mr_dircache SEC(".maps") __weak;

struct mr_pathgen {
	__u64 gen;
	__s64 inflight;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct mr_pathgen);
} mr_pathgen SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} mr_pathops SEC(".maps") __weak;

struct mr_dircache_op {
	__u64 owner;  /* pid_tgid of the task whose step wrote it */
	__u64 f;      /* struct file * */
	__u64 parent; /* struct dentry * */
	struct mr_dirkey key;
	__u64 gen;
	__u32 dlen;
	__u32 state; /* MR_DC_* (progs/file.bpf.c) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mr_dircache_op);
} mr_dcop SEC(".maps") __weak;
