/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Is a datagram for this host, or one it forwards? Only the first are balanced: UDP to the
 * service port that a router or container host passes on is not ours to rewrite.
 *
 * The kernel's FIB answers (a local route is "not forwarded"). A lookup costs tens of ns,
 * so each CPU remembers the answer for the last destination until the next jiffy: at most
 * one lookup per destination, CPU and jiffy, and a route change is seen within a jiffy. */
#ifndef LOCALITY_BPF_H
#define LOCALITY_BPF_H

#define AF_INET		2
#define AF_INET6	10

static __always_inline int fib_says_local(struct xdp_md *ctx, const struct udp_view *v)
{
	struct bpf_fib_lookup fib = {
		.l4_protocol = IPPROTO_UDP,
		.sport = v->udp->source,
		.dport = v->udp->dest,
		.ifindex = ctx->ingress_ifindex,
	};
	long ret;

	if (v->ipv6) {
		struct ipv6hdr *ip6 = v->l3;

		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	} else {
		struct iphdr *ip = v->l3;

		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	}
	ret = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	/* not forwarded: a local (or broadcast) route; forwarding off: the host routes nothing,
	 * so what reaches it is for it. Anything else would be forwarded or dropped by routing. */
	return ret == BPF_FIB_LKUP_RET_NOT_FWDED || ret == BPF_FIB_LKUP_RET_FWD_DISABLED;
}

/* 1 if the datagram's destination is an address of this host. */
static __always_inline int to_local_address(struct xdp_md *ctx, const struct udp_view *v,
					    struct cpu_data *cpu)
{
	struct locality_cache *c = &cpu->locality;
	__u64 jiffies;
	__u32 dst[4];

	if (ctx->ingress_ifindex == 1)
		return 1;	/* lo carries only the host's own traffic */
	packet_addr_16(v, ADDR_DEST, dst);
	jiffies = bpf_jiffies64();
	if (c->jiffies == jiffies && c->addr[0] == dst[0] && c->addr[1] == dst[1] &&
	    c->addr[2] == dst[2] && c->addr[3] == dst[3])
		return c->local;
	__builtin_memcpy(c->addr, dst, sizeof(dst));
	c->jiffies = jiffies;
	c->local = fib_says_local(ctx, v);
	return c->local;
}

#endif /* LOCALITY_BPF_H */
