/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Scripts run directly (shebang), kill tier only (progs/enforce_mmap.bpf.c).
 *
 *   mr_pscript  LRU tgid -> struct mr_pscript: a process whose last exec went through an
 *               interpreter round (bprm->interp != bprm->filename: `#!` or binfmt_misc),
 *               with the name the kernel handed the interpreter as its script argument.
 *               Writer: mr_enf_script (sched_process_exec) creates the row, the open
 *               programs arm it (sys_enter: same name) and consume it (sys_exit: the
 *               opened file is checked, the row deleted). Read by nobody else.
 */
#pragma once

#define MR_SCRIPT_NAME 256

struct mr_pscript {
	__u64 start_ns;  /* process start: a reused tgid does not match */
	__u32 armed_tid; /* the thread whose open named the script (0: none yet) */
	__u32 len;       /* bytes of name, NUL included */
	char name[MR_SCRIPT_NAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct mr_pscript);
} mr_pscript SEC(".maps") __weak;
