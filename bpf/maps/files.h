/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* File-open filtering.
 *   mr_watch     LPM trie: path prefix -> u32 flags (1 = report). Writer: the agent at start
 *                (agent/bpf/watch.py, defaults + --watch); reader: progs/file.bpf.c. A path
 *                is reported when the longest stored prefix of it is present. Directory
 *                prefixes are stored with their trailing '/'.
 *   mr_open_args hash tid -> the open in flight (between sys_enter and sys_exit). */
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
