/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Runtime policy maps: the interface between agent/policy (writer) and
 * progs/enforce_*.bpf.c (readers). A policy occupies one *slot* (0..63); every value
 * below is a bitmask of slots, so several policies share one row and one container.
 *
 *   mr_pgen    ARRAY[1] u32: which of the two mr_pconf entries is live. Writer:
 *              agent/policy/apply.py, as the one final write that publishes a change.
 *   mr_pconf   ARRAY[2] struct mr_pconf: per-slot facts (active, mode, host scope, which
 *              rule kinds the slot uses). The agent fills the idle entry, then flips mr_pgen.
 *   mr_pscope  HASH cgroup id -> u64 slots covering that container cgroup (0: a container no
 *              policy selects). Writer: the agent as containers are classified. Host cgroups
 *              have no row: they get mr_pconf.host. Rows are removed by the kernel on rmdir.
 *   mr_ppend   LRU cgroup id -> struct mr_ppend: cgroup v2 directories created but not yet
 *              classified by the agent. Writer: progs/enforce_cgroup.bpf.c on mkdir; the agent
 *              deletes a row once mr_pscope says what the cgroup is.
 *   mr_phold   HASH tgid -> struct mr_phold: tasks stopped (SIGSTOP) at their first exec in
 *              a pending cgroup while the agent is alive. The agent decides (SIGKILL or
 *              SIGCONT) once the cgroup is classified, and deletes the row.
 *   mr_palive  ARRAY[1] u64: boot-clock ns of the agent's last heartbeat. Tasks are held
 *              only while the heartbeat is fresh: a dead agent cannot freeze new containers.
 *   mr_pexec   LPM path -> struct mr_pexec_val (exec deny / allow). Exact paths are stored
 *              with their NUL (prefixlen counts it), prefixes ("/usr/bin/") without. An LPM
 *              trie returns only the longest match, so the compiler merges the masks of
 *              every shorter covering prefix into each longer row.
 *   mr_pfile   LPM path -> struct mr_pfile_val (file deny / monitor by access).
 *   mr_pnet    LPM (family, address) -> struct mr_pnet_val: up to MR_NET_RULES port/protocol
 *              rules per prefix, merged like mr_pexec.
 *   mr_psys    ARRAY[MR_SYS_MAX] syscall nr -> u64 slots denying it.
 *   mr_pino    HASH (device, inode) -> struct mr_pino_val: the identity of the files and
 *              directories that file rules and exec deny rules cover, so a rule holds through every other name
 *              of the same file (hard links, renames, bind mounts, chroots). Writers: the
 *              agent (agent/policy/identity.py: stat of every covered path in every root in
 *              scope, refreshed) and progs/enforce_file.bpf.c (a file opened by a covered
 *              name is remembered at once).
 *   mr_pheap   per-CPU scratch for the enforcement programs.
 */
#pragma once

#define MR_POL_MAX 64
#define MR_NET_RULES 16
#define MR_SYS_MAX 512
#define MR_PATH_KEY 256
#define MR_ALIVE_NS (2ULL * 1000000000ULL) /* heartbeat older than this: agent is gone */

/* issue 13: namespace types (index into mr_pconf.ns) and setid kinds (mr_pconf.setid) */
#define MR_NS_USER 0
#define MR_NS_MNT 1
#define MR_NS_NET 2
#define MR_NS_PID 3
#define MR_NS_IPC 4
#define MR_NS_UTS 5
#define MR_NS_CGROUP 6
#define MR_NS_TIME 7
#define MR_NS_MAX 8
#define MR_SETID_UID 0   /* S_ISUID */
#define MR_SETID_GID 1   /* S_ISGID */
#define MR_SETID_CAPS 2  /* security.capability xattr */
#define MR_SETID_MAX 4

/* mr_pconf.flags */
#define MR_PC_HOLD (1 << 0) /* hold the first exec of a pending cgroup (agent alive) */

struct mr_pconf {
	__u64 active;     /* slots in use */
	__u64 enforce;    /* slots in enforce mode; the others are in monitor mode */
	__u64 host;       /* slots whose scope includes host processes */
	__u64 exec;       /* slots with exec rules (deny, allow-list or drift) */
	__u64 drift;      /* slots with exec.drift: block */
	__u64 exec_allow; /* slots with an exec allow-list: what it does not list is denied */
	__u64 files;      /* slots with file rules */
	__u64 net;        /* slots with egress rules */
	__u64 net_allow;  /* slots with an egress allow-list */
	__u64 syscalls;   /* slots with syscall rules */
	__u32 gen;        /* publication counter (for user space) */
	__u32 flags;      /* MR_PC_* */
	/* --- issue 13, agent down (spec.agentDown, docs/policy.md "Agent down") */
	__u64 down_closed;  /* slots with agentDown: closed */
	__u64 down_hold_ns; /* the longest agentDownHold of those: how long a new cgroup's
			     * first exec waits for a dead agent before it is refused */
	/* --- issue 13: namespace and setid rules (progs/enforce_args.bpf.c) --- */
	__u64 args;       /* slots with namespace or setid rules (mr_enf_args attached) */
	__u64 ns[MR_NS_MAX];       /* per namespace type (MR_NS_*): slots denying it */
	__u64 setid[MR_SETID_MAX]; /* MR_SETID_UID / _GID / _CAPS index: slots denying it */
};

/* mr_enforce.arg of an exec record: held / refused because the agent was down */
#define MR_ARG_AGENT_DOWN (1 << 8) /* above MR_EX_* (the low byte of an exec record's arg) */

struct mr_ppath_key {
	__u32 prefixlen; /* bits */
	char path[MR_PATH_KEY];
};

struct mr_pexec_val {
	__u64 deny;
	__u64 allow;
};

struct mr_pfile_val {
	__u64 deny_read;
	__u64 deny_write;
	__u64 mon_read;   /* monitor rules: reported as would-block, never enforced */
	__u64 mon_write;
};

struct mr_pnet_key {
	__u32 prefixlen; /* 32 (family word) + CIDR bits */
	__u8 family;     /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];
};

struct mr_pnet_rule {
	__u64 deny;
	__u64 allow;
	__u16 port_lo;   /* 0-65535 = any port; an unused rule has lo > hi */
	__u16 port_hi;
	__u8 proto;      /* 0 = any, 6 = tcp, 17 = udp */
	__u8 pad[3];
};

struct mr_pnet_val {
	struct mr_pnet_rule r[MR_NET_RULES];
};

struct mr_ppend {
	__u64 mask;  /* inherited from the parent's mr_pscope row (nested container cgroups) */
	__u64 ts;    /* boot ns of the mkdir */
};

struct mr_phold {
	__u64 cgroup_id;
	__u64 start_ns;   /* process start: the agent checks it before signalling the pid */
	__u64 exec_deny;  /* slots whose exec rules deny this exec (any scope) */
	__u64 drift;      /* slots whose drift rule denies it (any scope) */
	__u64 ts;
};

struct mr_pheap_buf {
	char pbuf[8192];              /* path_resolve() scratch: string in the first half */
	struct mr_ppath_key k1;       /* lookup keys */
	struct mr_ppath_key k2;
	char rec[8192];               /* the mr_enforce record under construction */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} mr_pgen SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct mr_pconf);
} mr_pconf SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} mr_pscope SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct mr_ppend);
} mr_ppend SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct mr_phold);
} mr_phold SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mr_palive SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct mr_ppath_key);
	__type(value, struct mr_pexec_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mr_pexec SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct mr_ppath_key);
	__type(value, struct mr_pfile_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mr_pfile SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct mr_pnet_key);
	__type(value, struct mr_pnet_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mr_pnet SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MR_SYS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mr_psys SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mr_pheap_buf);
} mr_pheap SEC(".maps") __weak;

/* ---- file identity (issue 13: a rule holds through other names of the same file) ---- */

struct mr_pino_key {
	__u64 dev; /* the kernel's dev_t of the inode's superblock: (major << 20) | minor */
	__u64 ino;
};

struct mr_pino_val {
	__u64 deny_read;  /* as mr_pfile_val */
	__u64 deny_write;
	__u64 mon_read;
	__u64 mon_write;
	__u64 exec_deny;  /* slots whose exec deny rules name this file: a hard link of a denied
			   * binary, run or mapped by another name, is the same binary */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mr_pino_key);
	__type(value, struct mr_pino_val);
} mr_pino SEC(".maps") __weak;

/* mr_pagent ARRAY[1] u32: the running agent's tgid, written by it at start. Its own repairs
 * of what a killed task left (agent/policy/identity.py) change covered files: they must
 * not be taken for an attack. A map, not a rodata constant: enforcement programs pinned by
 * an earlier agent keep running after a restart with the earlier agent's constants. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} mr_pagent SEC(".maps") __weak;

