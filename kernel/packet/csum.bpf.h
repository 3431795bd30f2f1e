/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Incremental UDP checksum update for a rewritten 16-bit field (RFC 1624, eqn. 3). */
#ifndef CSUM_BPF_H
#define CSUM_BPF_H

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}

/* HC' = ~(~HC + ~m + m'); one's complement sums are byte-order independent. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + (__u32)new;

	return ~csum_fold32(sum);
}

/* Rewrites the UDP destination port and keeps the checksum valid.
 * IPv4 checksum 0 means "none" and stays 0; a computed 0 is sent as 0xffff. */
static __always_inline void udp_set_dest(struct udphdr *udp, __be16 port)
{
	__u16 check = udp->check;

	if (check) {
		check = csum_replace16(check, udp->dest, port);
		udp->check = check ? check : 0xffff;
	}
	udp->dest = port;
}

#endif /* CSUM_BPF_H */
