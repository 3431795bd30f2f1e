/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Whether a local UDP socket would receive a datagram. Used for registrations only: with
 * -u they go up to `ebpflb run`, unless no process listens any more (it was killed), in
 * which case the kernel takes them, so heartbeats are never lost. */
#ifndef SOCKET_LOOKUP_BPF_H
#define SOCKET_LOOKUP_BPF_H

static __always_inline int udp_socket_bound(struct xdp_md *ctx, const struct udp_view *v)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;

	if (v->ipv6) {
		struct ipv6hdr *ip6 = v->l3;

		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
		t.ipv6.sport = v->udp->source;
		t.ipv6.dport = v->udp->dest;
		size = sizeof(t.ipv6);
	} else {
		struct iphdr *ip = v->l3;

		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		t.ipv4.sport = v->udp->source;
		t.ipv4.dport = v->udp->dest;
		size = sizeof(t.ipv4);
	}
	sk = bpf_sk_lookup_udp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

#endif /* SOCKET_LOOKUP_BPF_H */
