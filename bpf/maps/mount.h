/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Mount calls under a syscall rule (issue 13, must-have 5; progs/enforce_sys.bpf.c).
 *
 *   mr_pmnt  LRU thread id -> struct mr_pmnt: a mount-family call (mount, umount2,
 *            open_tree, move_mount, fsmount, mount_setattr) a syscall rule matched. Writer:
 *            mr_enf_sys at sys_enter (after the SIGKILL is sent); the sys_exit program of
 *            that syscall reads and deletes it and writes the enforce record with the
 *            call's result and its target, so the agent knows whether a mount was made
 *            and where (agent/policy/mount_residue.py). Read by nobody else.
 */
#pragma once

struct mr_pmnt {
	__u64 policies;
	__u64 enforced;
	__u64 args[5];   /* the raw syscall arguments */
	__u32 nr;
	__u16 action;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct mr_pmnt);
} mr_pmnt SEC(".maps") __weak;
