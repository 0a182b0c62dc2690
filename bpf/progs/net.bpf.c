// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Network activity: TCP/UDP connect (cgroup/connect4|6 on the cgroup v2 root, so every
 * process is covered and issue #3 can deny in the same hook), unconnected UDP sends
 * (cgroup/sendmsg4|6, once per flow per second), listen (sock:inet_sock_set_state to
 * TCP_LISTEN, in the listening task's context) and accept (sys_exit_accept*, reading the
 * new socket's addresses). These programs only observe: they always allow.
 */
#include "../lib/common.h"
#include "../maps/net.h"
#include "../lib/task.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_LISTEN 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define NSEC_PER_SEC 1000000000ULL

static __always_inline void net_emit(struct mr_net *ev, __u16 op)
{
	proc_fill_current(&ev->proc);
	hdr_init(&ev->hdr, op, sizeof(*ev));
	emit(ev, sizeof(*ev));
}

/* v6 is a compile-time constant: a connect4 program may not even read user_ip6. */
static __always_inline void from_sock_addr(struct mr_net *ev, struct bpf_sock_addr *ctx, int v6)
{
	ev->family = v6 ? AF_INET6 : AF_INET;
	ev->protocol = ctx->protocol;
	ev->dport = bpf_ntohs(ctx->user_port);
	if (!v6) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(ev->daddr, &a, 4);
	} else {
		__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
		__builtin_memcpy(ev->daddr, a, 16);
	}
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx, int v6)
{
	struct mr_net ev = {};

	if (is_self())
		return 1;
	from_sock_addr(&ev, ctx, v6);
	net_emit(&ev, MR_OP_CONNECT);
	return 1;
}

static __always_inline int on_sendmsg(struct bpf_sock_addr *ctx, int v6)
{
	struct mr_net ev = {};
	struct mr_udp_key key = {};
	__u64 now = bpf_ktime_get_boot_ns(), *last;

	if (is_self())
		return 1;
	from_sock_addr(&ev, ctx, v6);
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	key.family = ev.family;
	key.port = ev.dport;
	__builtin_memcpy(key.addr, ev.daddr, 16);
	last = bpf_map_lookup_elem(&mr_udp_seen, &key);
	if (last && now - *last < NSEC_PER_SEC)
		return 1;
	bpf_map_update_elem(&mr_udp_seen, &key, &now, BPF_ANY);
	net_emit(&ev, MR_OP_SEND);
	return 1;
}

SEC("cgroup/connect4")
int mr_connect4(struct bpf_sock_addr *ctx) { return on_connect(ctx, 0); }

SEC("cgroup/connect6")
int mr_connect6(struct bpf_sock_addr *ctx) { return on_connect(ctx, 1); }

SEC("cgroup/sendmsg4")
int mr_sendmsg4(struct bpf_sock_addr *ctx) { return on_sendmsg(ctx, 0); }

SEC("cgroup/sendmsg6")
int mr_sendmsg6(struct bpf_sock_addr *ctx) { return on_sendmsg(ctx, 1); }

SEC("tracepoint/sock/inet_sock_set_state")
int mr_sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct mr_net ev = {};

	if (ctx->newstate != TCP_LISTEN || is_self())
		return 0;
	ev.family = ctx->family;
	ev.protocol = ctx->protocol;
	ev.sport = ctx->sport;
	/* probe reads: array fields of a tracepoint context cannot be copied directly */
	if (ev.family == AF_INET)
		bpf_probe_read_kernel(ev.saddr, 4, ctx->saddr);
	else
		bpf_probe_read_kernel(ev.saddr, 16, ctx->saddr_v6);
	net_emit(&ev, MR_OP_LISTEN);
	return 0;
}

static __always_inline int on_accept_exit(long ret)
{
	struct task_struct *task;
	struct socket *sock;
	struct sock *sk;
	struct file *f;
	struct mr_net ev = {};
	umode_t mode;

	if (ret < 0 || is_self())
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	f = task_fd_file(task, ret);
	if (!f)
		return 0;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	ev.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (ev.family != AF_INET && ev.family != AF_INET6)
		return 0;
	ev.protocol = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	ev.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (ev.family == AF_INET) {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(ev.saddr, &s, 4);
		__builtin_memcpy(ev.daddr, &d, 4);
	} else {
		BPF_CORE_READ_INTO(&ev.saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&ev.daddr, sk, __sk_common.skc_v6_daddr);
	}
	net_emit(&ev, MR_OP_ACCEPT);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int mr_exit_accept4(struct trace_event_raw_sys_exit *ctx) { return on_accept_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_accept")
int mr_exit_accept(struct trace_event_raw_sys_exit *ctx) { return on_accept_exit(ctx->ret); }
