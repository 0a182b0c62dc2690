// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Egress enforcement (mr_pnet): cgroup/connect4|6 (TCP connect, connected UDP) and
 * cgroup/sendmsg4|6 (unconnected UDP) on the cgroup v2 root. Returning 0 makes the call
 * fail with EPERM before any packet leaves; these programs sit beside the observing ones
 * in progs/net.bpf.c (multi-attach: any program returning 0 denies).
 *
 * A destination is checked as the address the call really reaches (dest_of): IPv4-mapped
 * (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) IPv6 forms as the IPv4 address; the
 * unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0), which the kernel routes to this host,
 * as the socket's bound source address, else loopback (127.0.0.1, ::1). The enforce
 * record carries that address.
 */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../maps/policy.h"
#include "../lib/task.h"
#include "../lib/path.h"
#include "../lib/enforce.h"

#define AF_INET 2
#define AF_INET6 10

static __always_inline void key4(struct mr_pnet_key *k, __u32 a)
{
	k->family = 4;
	k->prefixlen = 64;
	__builtin_memcpy(k->addr, &a, 4);
}

/* The LPM key of the address the call reaches (see the file's comment). */
static __always_inline void dest_of(struct bpf_sock_addr *ctx, int v6, struct mr_pnet_key *k)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 a[4];

	if (!v6) {
		a[3] = ctx->user_ip4;
	} else {
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
		if (a[0] || a[1] || (a[2] && a[2] != bpf_htonl(0xffff)) ||
		    (!a[2] && a[3] == bpf_htonl(1))) {  /* a real IPv6 address, or ::1 */
			k->family = 6;
			k->prefixlen = 160;
			__builtin_memcpy(k->addr, a, 16);
			return;
		}
		if (!a[2] && !a[3]) {  /* ::, this host: the bound address, else ::1 */
			k->family = 6;
			k->prefixlen = 160;
			if (sk) {
				a[0] = sk->src_ip6[0];
				a[1] = sk->src_ip6[1];
				a[2] = sk->src_ip6[2];
				a[3] = sk->src_ip6[3];
			}
			if (!(a[0] | a[1] | a[2] | a[3]))
				a[3] = bpf_htonl(1);
			if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)) {
				key4(k, a[3]);  /* bound to a mapped IPv4 address */
				return;
			}
			__builtin_memcpy(k->addr, a, 16);
			return;
		}
		/* ::ffff:a.b.c.d or ::a.b.c.d: the IPv4 address */
	}
	if (a[3] == 0) {  /* 0.0.0.0, this host: the bound address, else 127.0.0.1 */
		if (sk && !v6)
			a[3] = sk->src_ip4;
		if (a[3] == 0)
			a[3] = bpf_htonl(0x7f000001);
	}
	key4(k, a[3]);
}

static __always_inline int net_check(struct bpf_sock_addr *ctx, int v6)
{
	struct mr_pconf *c = pconf();
	struct mr_pnet_key k = {};
	struct mr_pnet_val *v;
	struct mr_enforce ev;
	__u64 cgid, scope, deny = 0, allow = 0, hit, enf;
	__u16 port;
	__u8 proto;
	int pending, i;

	if (!c || !(c->active & c->net))
		return 1;
	cgid = bpf_get_current_cgroup_id();
	scope = scope_of(c, cgid, &pending) & c->net;
	if (!scope)
		return 1;
	port = bpf_ntohs(ctx->user_port);
	proto = ctx->protocol;
	dest_of(ctx, v6, &k);
	v = bpf_map_lookup_elem(&mr_pnet, &k);
	if (v) {
		for (i = 0; i < MR_NET_RULES; i++) {
			struct mr_pnet_rule *r = &v->r[i];

			if (r->port_lo > r->port_hi)
				break;
			if (port < r->port_lo || port > r->port_hi)
				continue;
			if (r->proto && r->proto != proto)
				continue;
			deny |= r->deny;
			allow |= r->allow;
		}
	}
	deny |= c->net_allow & ~allow;
	hit = deny & scope;
	if (!hit)
		return 1;
	enf = hit & c->enforce;
	enf_init(&ev, MR_EK_NET, action_of(enf, MR_EA_BLOCKED), hit, enf);
	ev.arg = proto;
	ev.family = k.family == 4 ? AF_INET : AF_INET6;
	ev.port = port;
	__builtin_memcpy(ev.addr, k.addr, 16);
	hdr_init(&ev.hdr, MR_OP_ENFORCE, sizeof(ev));
	emit_now(&ev, sizeof(ev));
	return enf ? 0 : 1;
}

SEC("cgroup/connect4")
int mr_enf_connect4(struct bpf_sock_addr *ctx) { return net_check(ctx, 0); }

SEC("cgroup/connect6")
int mr_enf_connect6(struct bpf_sock_addr *ctx) { return net_check(ctx, 1); }

SEC("cgroup/sendmsg4")
int mr_enf_sendmsg4(struct bpf_sock_addr *ctx) { return net_check(ctx, 0); }

SEC("cgroup/sendmsg6")
int mr_enf_sendmsg6(struct bpf_sock_addr *ctx) { return net_check(ctx, 1); }
