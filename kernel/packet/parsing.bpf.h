/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Bounds-checked header parsing: each step moves a cursor and returns the next protocol or -1. */
#ifndef PARSING_BPF_H
#define PARSING_BPF_H

#define ETH_P_IP	0x0800
#define ETH_P_IPV6	0x86DD
#define ETH_P_8021Q	0x8100
#define ETH_P_8021AD	0x88A8
#define IPPROTO_HOPOPTS	0
#define IPPROTO_UDP	17
#define IPPROTO_ROUTING	43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_DSTOPTS	60
#define IP_MF		0x2000
#define IP_OFFSET	0x1FFF
#define IP6_OFFSET	0xFFF8
#define VLAN_MAX_DEPTH	2
#define IPV6_EXT_MAX	6	/* extension headers walked before giving up */

struct hdr_cursor {
	void *pos;
	void *end;
};

/* Where the UDP header of a datagram is, once found. */
struct udp_view {
	struct udphdr *udp;
	void *l3;		/* the IPv4 or IPv6 header */
	__u32 ipv6;		/* 0: IPv4, 1: IPv6 */
	__u32 fragmented;	/* first fragment of a larger datagram */
};

enum parse_result {
	PARSE_UDP = 0,		/* a UDP header is at view->udp */
	PARSE_OTHER = 1,	/* not UDP, or UDP that cannot be reached (later fragment, AH, ESP) */
	PARSE_MALFORMED = 2,	/* truncated or inconsistent headers */
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* Returns the EtherType after up to VLAN_MAX_DEPTH 802.1Q/802.1ad tags, or -1. */
static __always_inline int parse_ethernet(struct hdr_cursor *c)
{
	struct ethhdr *eth = c->pos;
	__u16 proto;

	if ((void *)(eth + 1) > c->end)
		return -1;
	proto = eth->h_proto;
	c->pos = eth + 1;
#pragma unroll
	for (int i = 0; i < VLAN_MAX_DEPTH; i++) {
		struct vlan_tag *tag = c->pos;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(tag + 1) > c->end)
			return -1;
		proto = tag->proto;
		c->pos = tag + 1;
	}
	return bpf_ntohs(proto);
}

static __always_inline int parse_ipv4(struct hdr_cursor *c, struct udp_view *v)
{
	struct iphdr *ip = c->pos;
	__u32 hdr_len;

	if ((void *)(ip + 1) > c->end)
		return PARSE_MALFORMED;
	hdr_len = ip->ihl * 4;
	if (ip->version != 4 || hdr_len < sizeof(*ip))
		return PARSE_MALFORMED;
	if (ip->protocol != IPPROTO_UDP)
		return PARSE_OTHER;
	/* later fragments carry no UDP header: reassembly joins them to the rewritten first one */
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return PARSE_OTHER;
	v->fragmented = !!(ip->frag_off & bpf_htons(IP_MF));
	v->l3 = ip;
	v->ipv6 = 0;
	c->pos = (void *)ip + hdr_len;
	return PARSE_UDP;
}

struct ipv6_opt_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __always_inline int parse_ipv6(struct hdr_cursor *c, struct udp_view *v)
{
	struct ipv6hdr *ip6 = c->pos;
	__u8 next;

	if ((void *)(ip6 + 1) > c->end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	next = ip6->nexthdr;
	v->l3 = ip6;
	v->ipv6 = 1;
	v->fragmented = 0;
	c->pos = ip6 + 1;

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr_min *ext = c->pos;

		if (next == IPPROTO_UDP)
			return PARSE_UDP;
		if ((void *)(ext + 1) > c->end)
			return PARSE_MALFORMED;
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			next = ext->nexthdr;
			c->pos = (void *)ext + (ext->hdrlen + 1) * 8;
			break;
		case IPPROTO_FRAGMENT: {
			struct frag_hdr *frag = c->pos;

			if ((void *)(frag + 1) > c->end)
				return PARSE_MALFORMED;
			if (frag->frag_off & bpf_htons(IP6_OFFSET))
				return PARSE_OTHER;
			v->fragmented = 1;
			next = frag->nexthdr;
			c->pos = frag + 1;
			break;
		}
		default:	/* AH, ESP, no next header, or not UDP at all */
			return PARSE_OTHER;
		}
	}
	return next == IPPROTO_UDP ? PARSE_UDP : PARSE_OTHER;
}

/* Finds the UDP header of an Ethernet frame carrying IPv4 or IPv6. */
static __always_inline int parse_udp(struct hdr_cursor *c, struct udp_view *v)
{
	int proto = parse_ethernet(c);
	int res;

	if (proto == ETH_P_IP)
		res = parse_ipv4(c, v);
	else if (proto == ETH_P_IPV6)
		res = parse_ipv6(c, v);
	else
		return proto < 0 ? PARSE_MALFORMED : PARSE_OTHER;
	if (res != PARSE_UDP)
		return res;

	v->udp = c->pos;
	if ((void *)(v->udp + 1) > c->end)
		return PARSE_MALFORMED;
	c->pos = v->udp + 1;
	return PARSE_UDP;
}

/* 127.0.0.0/8 or ::1; addr in network byte order (IPv4 in addr[0]). */
static __always_inline int is_loopback_addr(int ipv6, const __u32 *addr)
{
	if (!ipv6)
		return (bpf_ntohl(addr[0]) >> 24) == 127;
	return !addr[0] && !addr[1] && !addr[2] && addr[3] == bpf_htonl(1);
}

static __always_inline int is_loopback_source(const struct udp_view *v)
{
	if (v->ipv6) {
		struct ipv6hdr *ip6 = v->l3;

		return is_loopback_addr(1, (const __u32 *)&ip6->saddr);
	}
	return is_loopback_addr(0, &((struct iphdr *)v->l3)->saddr);
}

/* An address as 16 bytes, IPv4 mapped to ::ffff:a.b.c.d (network byte order). */
static __always_inline void addr_to_16(int ipv6, const __u32 *addr, __u32 out[4])
{
	if (ipv6) {
		out[0] = addr[0];
		out[1] = addr[1];
		out[2] = addr[2];
		out[3] = addr[3];
		return;
	}
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = addr[0];
}

#define ADDR_SOURCE	0
#define ADDR_DEST	1

/* The datagram's source or destination address as 16 bytes. */
static __always_inline void packet_addr_16(const struct udp_view *v, int which, __u32 out[4])
{
	if (v->ipv6) {
		struct ipv6hdr *ip6 = v->l3;

		addr_to_16(1, (const __u32 *)(which == ADDR_DEST ? &ip6->daddr : &ip6->saddr), out);
	} else {
		struct iphdr *ip = v->l3;

		addr_to_16(0, which == ADDR_DEST ? &ip->daddr : &ip->saddr, out);
	}
}

#endif /* PARSING_BPF_H */
