/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Whether a local UDP socket would receive a datagram if it went to `port`: the stack's own
 * lookup, with the datagram's addresses. For registrations (with -u they go up to `ebpflb
 * run`, unless no process listens any more, in which case the kernel takes them) and for
 * gateways' liveness (liveness.bpf.h). */
#ifndef SOCKET_LOOKUP_BPF_H
#define SOCKET_LOOKUP_BPF_H

/* The datagram's 4-tuple, as the stack would look up its socket; returns its size. */
static __always_inline __u32 udp_tuple_of(const struct udp_view *v, struct bpf_sock_tuple *t)
{
	if (v->ipv6) {
		struct ipv6hdr *ip6 = v->l3;

		__builtin_memcpy(t->ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t->ipv6.daddr, &ip6->daddr, 16);
		t->ipv6.sport = v->udp->source;
		t->ipv6.dport = v->udp->dest;
		return sizeof(t->ipv6);
	}
	struct iphdr *ip = v->l3;

	t->ipv4.saddr = ip->saddr;
	t->ipv4.daddr = ip->daddr;
	t->ipv4.sport = v->udp->source;
	t->ipv4.dport = v->udp->dest;
	return sizeof(t->ipv4);
}

/* Whether a socket is bound for the tuple with its destination port replaced by `port`. */
static __always_inline int tuple_socket_bound(void *ctx, struct bpf_sock_tuple *t, __u32 size, __be16 port)
{
	struct bpf_sock *sk;

	if (size == sizeof(t->ipv4))
		t->ipv4.dport = port;
	else if (size == sizeof(t->ipv6))
		t->ipv6.dport = port;
	else
		return 0;
	sk = bpf_sk_lookup_udp(ctx, t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

static __always_inline int udp_socket_bound(struct xdp_md *ctx, const struct udp_view *v, __be16 port)
{
	struct bpf_sock_tuple t = {};
	__u32 size = udp_tuple_of(v, &t);

	return tuple_socket_bound(ctx, &t, size, port);
}

#endif /* SOCKET_LOOKUP_BPF_H */
