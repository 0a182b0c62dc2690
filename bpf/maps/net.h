/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Network bookkeeping.
 *   mr_udp_seen  LRU (cgroup, tgid, destination) -> last report time: UDP sends are reported
 *                once per flow per second, so a busy UDP client cannot flood user space.
 *   mr_net_args  hash tid -> fd of a listen() in flight. */
#pragma once

struct mr_udp_key {
	__u32 tgid;
	__u16 family;
	__u16 port;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct mr_udp_key);
	__type(value, __u64);
} mr_udp_seen SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} mr_net_args SEC(".maps") __weak;
