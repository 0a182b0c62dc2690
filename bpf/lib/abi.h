/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The kernel -> user space ABI: every record written to the ring buffer.
 *
 * Every record starts with struct mr_hdr; the opcode picks the body. Strings follow the
 * fixed part back to back, their lengths (bytes, no NUL) in the fixed part. The one Python
 * mirror of these structs is agent/bpf/abi.py, checked against the BTF of the built object
 * by tests/unit/test_abi.py: change both together.
 */
#pragma once

enum mr_op {
	MR_OP_EXEC = 1,
	MR_OP_FORK = 2,
	MR_OP_EXIT = 3,
	MR_OP_OPEN = 4,
	MR_OP_CONNECT = 5,
	MR_OP_ACCEPT = 6,
	MR_OP_LISTEN = 7,
	MR_OP_SEND = 8,
	MR_OP_CGROUP_MKDIR = 9,
	MR_OP_CGROUP_RMDIR = 10,
	MR_OP_ENFORCE = 11,
	MR_OP_SYSCALL = 12,  /* progs/syscalls_obs.bpf.c: struct mr_sysobs */
	MR_OP_REPEAT = 13,   /* progs/agg.bpf.c: struct mr_repeat, then the repeated record */
};

/* Indexes into mr_stats (per-CPU counters read by the agent's metrics collector). */
enum mr_stat {
	MR_STAT_RB_DROP = 0,     /* ring buffer full: record lost in the kernel (all types) */
	MR_STAT_PATH_TRUNC = 1,  /* a path deeper or longer than we resolve */
	MR_STAT_EVENTS = 2,      /* records written */
	MR_STAT_DIRCACHE_HIT = 3,  /* relative opens decided by the directory cache (no walk) */
	MR_STAT_DIRCACHE_MISS = 4, /* relative opens in a cacheable directory that walked */
	MR_STAT_AGG = 5,         /* repeats counted in mr_agg instead of written (progs/agg.bpf.c) */
	MR_STAT_AGG_FULL = 6,    /* mr_agg full: a first event not aggregated (written in full) */
	MR_STAT_AGG_RETRY = 7,   /* a summary the ring refused: its count put back, sent later */
	MR_STAT_AGG_RACE = 8,    /* another task's exit interleaved on the CPU: written in full */
	MR_STAT_DROP_BASE = 16,  /* + opcode (< 16): records of that type lost, ring full */
	MR_STAT_MAX = 32,
};

/* Flags in mr_exec.flags / mr_open.pflags. */
#define MR_F_ARGS_TRUNC   (1 << 0)
#define MR_F_BINARY_TRUNC (1 << 1)
#define MR_F_CWD_TRUNC    (1 << 2)
#define MR_F_PATH_TRUNC   (1 << 3)
#define MR_F_PATH_RAW     (1 << 4) /* open: path as the caller wrote it (open failed) */
#define MR_F_ROOT_PRIVATE (1 << 5) /* open: path from a root other than the host's */

#define MR_COMM_LEN 16

struct mr_hdr {
	__u16 op;
	__u16 size;   /* whole record, header included */
	__u32 cpu;
	__u64 ts;     /* bpf_ktime_get_boot_ns() */
};

/* The task an event is about (for fork: the child). start_ns values are the group
 * leaders' start_boottime, the same clock /proc/<pid>/stat's starttime counts in ticks, so
 * (start_ns, pid) identifies a process across pid reuse and matches what /proc shows. */
struct mr_proc {
	__u32 pid;   /* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 mntns;
	__u32 pad;
	__u64 cgroup_id;
	__u64 start_ns;
	__u64 pstart_ns;
	char comm[MR_COMM_LEN];
};

/* data: binary (resolved path of the image that runs) | filename (as passed to execve)
 *       | args (NUL separated) | cwd */
struct mr_exec {
	struct mr_hdr hdr;
	struct mr_proc proc;
	__u32 flags;
	__u32 argc;
	__u16 binary_len;
	__u16 filename_len;
	__u16 args_len;
	__u16 cwd_len;
	char data[];
};

struct mr_fork {
	struct mr_hdr hdr;
	struct mr_proc proc;
};

struct mr_exit {
	struct mr_hdr hdr;
	struct mr_proc proc;
	__u32 status; /* wait(2) status: exit code << 8, or the signal number */
	__u32 pad;
};

struct mr_open {
	struct mr_hdr hdr;
	struct mr_proc proc;
	__u32 flags;  /* open(2) flags */
	__s32 ret;    /* fd, or -errno */
	__u16 pflags;
	__u16 path_len;
	__u32 pad;
	char data[];  /* path */
};

/* connect, accept, listen, send: addresses in network byte order, ports in host order. */
struct mr_net {
	struct mr_hdr hdr;
	struct mr_proc proc;
	__u16 family;
	__u16 protocol;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct mr_cgroup {
	struct mr_hdr hdr;
	__u64 id;
	__u32 level;
	__u16 path_len;
	__u16 pad;
	char data[];
};

/* A summary of repeats (progs/agg.bpf.c): `count` events identical to the record that
 * follows (a whole struct mr_open, header and path included; its header's ts is first_ns)
 * in everything but their time, between first_ns and last_ns, that were counted instead of
 * written. The first event of each window was written in full before them. */
struct mr_repeat {
	struct mr_hdr hdr;
	__u64 count;
	__u64 first_ns;
	__u64 last_ns;
	/* then the repeated record (struct mr_open + its path) */
};

/* Key of mr_watch (LPM trie of watched path prefixes). */
#define MR_WATCH_LEN 256
struct mr_watch_key {
	__u32 prefixlen; /* bits */
	char path[MR_WATCH_LEN];
};

/* Enforcement (progs/enforce_*.bpf.c, or the agent itself for held tasks it decides on).
 * policies: slots whose rule matched this task (scope applied); enforced: of those, the
 * ones in enforce mode, i.e. the policies that caused `action`. */
enum mr_ekind {
	MR_EK_EXEC = 1,     /* exec deny or allow-list */
	MR_EK_DRIFT = 2,    /* exec of a file not in the image */
	MR_EK_FILE = 3,
	MR_EK_NET = 4,
	MR_EK_SYSCALL = 5,
	/* issue 13 (progs/enforce_args.bpf.c): arg = syscall nr; the u64 at addr[0..8] = the
	 * CLONE_NEW* flags asked for (NS) or the mode asked for (SETID); family = MR_SETID_*
	 * bits asked for (SETID); path = the file, or the directory a relative path2 starts
	 * from; path2 = the path as passed (empty for a descriptor) */
	MR_EK_NS = 6,       /* namespace creation (unshare, clone, clone3) or entry (setns) */
	MR_EK_SETID = 7,    /* setuid / setgid bit or file capabilities set on a file */
	/* 8: not used (mapped code is reported as exec / drift with a `via`) */
	MR_EK_LINK = 9,     /* a covered file or directory changed by identity, whatever its
			     * name (link, rename, unlink, chmod, truncate ...): arg = syscall nr */
};

/* mr_enforce.arg flag for MR_EK_FILE: the file matched by identity (mr_pino), not only by
 * name; MR_EK_FILE with it, MR_EK_LINK, MR_EK_EXEC and MR_EK_DRIFT carry (dev u64, ino u64)
 * in addr. */
#define MR_EF_IDENT (1 << 8)

enum mr_eaction {
	MR_EA_BLOCKED = 1,     /* refused with EPERM: the action did not happen */
	MR_EA_KILLED = 2,      /* SIGKILL (exec: before the new image ran; file/syscall: after) */
	MR_EA_WOULD_BLOCK = 3, /* monitor mode */
	MR_EA_HELD = 4,        /* first exec in an unclassified cgroup: stopped until decided */
	/* --- issue 13, agent down: user space only (agent/policy/hold.py), never emitted here */
	MR_EA_UNCOVERED = 16,  /* a new container ran without its policies: agent was down */
};

struct mr_enforce {
	struct mr_hdr hdr;
	struct mr_proc proc;
	__u64 policies;
	__u64 enforced;
	__u16 kind;       /* enum mr_ekind */
	__u16 action;     /* enum mr_eaction */
	__u32 arg;        /* syscall nr | file f_mode (1 read, 2 write) | net protocol */
	__u16 family;     /* net: AF_INET / AF_INET6 */
	__u16 port;       /* net: destination port, host order */
	__u16 path_len;   /* exec: resolved binary; file: resolved path */
	__u16 path2_len;  /* exec: filename as passed to execve */
	__u8 addr[16];    /* net: destination, network order */
	char data[];
};

/* Observed syscalls (progs/syscalls_obs.bpf.c), for user-space detection: reported at
 * sys_exit with the result, so failed attempts (EPERM) are seen too. nr is the native
 * syscall number (execve = 59 for the exec-time checks: stdio sockets, upper-layer binary).
 * Strings (lengths below, any may be 0) follow back to back: path | path2 | path3; what
 * each holds per syscall is listed in docs/events.md. */
#define MR_SO_STDIN_SOCK  (1 << 0) /* fd 0 is an inet socket (peer in family/port/addr) */
#define MR_SO_STDOUT_SOCK (1 << 1)
#define MR_SO_STDERR_SOCK (1 << 2)
#define MR_SO_UPPER       (1 << 3) /* exec: the binary is on an overlayfs upper layer */
#define MR_SO_PATH_FD     (1 << 4) /* path resolved from a file descriptor */
#define MR_SO_PATH_TRUNC  (1 << 5)
#define MR_SO_TMPFS       (1 << 6) /* exec: the binary is on tmpfs / ramfs (incl. memfd) */
#define MR_SO_STDIN_PIPE  (1 << 7) /* exec: fd 0 is a pipe / FIFO and the binary's
				    * file name a shell's or an interpreter's (arg0 = argc) */

struct mr_sysobs {
	struct mr_hdr hdr;
	struct mr_proc proc;
	__s64 ret;        /* syscall result: >= 0, or -errno */
	__u64 arg0;       /* raw syscall arguments (pointers are meaningless here) */
	__u64 arg1;
	__u64 arg2;
	__u64 arg3;
	__u32 nr;
	__u16 flags;      /* MR_SO_* */
	__u16 family;     /* socket family (socket(2), stdio sockets) */
	__u16 port;       /* stdio / dup socket: peer port, host order */
	__u16 path_len;
	__u16 path2_len;
	__u16 path3_len;
	__u8 addr[16];    /* stdio / dup socket: peer address, network order */
	char data[];
};

/* ---- issue 13, exec however the code is mapped (progs/enforce_mmap.bpf.c) ----
 * mr_enforce.arg of MR_EK_EXEC / MR_EK_DRIFT records: how the file's code was reached.
 * path is then the mapped (or script) file; path2 is empty. Mirror: abi.ExecVia. */
#define MR_EX_EXEC     0 /* execve / execveat of the file (bprm) */
#define MR_EX_MMAP     1 /* mmap(PROT_EXEC) of the file (the dynamic loader, dlopen...) */
#define MR_EX_MPROTECT 2 /* mprotect / pkey_mprotect adding PROT_EXEC to its mapping */
#define MR_EX_SCRIPT   3 /* kill tier: the interpreter of a `#!` exec opened the script */

/* ---- issue 13, mount calls under a syscall rule (progs/enforce_sys.bpf.c) ----
 * mr_enforce.family of an MR_EK_SYSCALL record written at the call's exit: addr[0..8] =
 * the call's flags (u64), addr[8..16] = its return value (s64); path = the directory a
 * relative path2 starts from (or the descriptor's file), path2 = the target as passed
 * (mount, umount2, move_mount's to_path; open_tree's and mount_setattr's path). */
#define MR_ES_RESULT 1
