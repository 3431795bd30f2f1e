// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Rejected design (a): per datagram, scan every gateway and send to the one with the lowest
 * packets/weight. Built to be as cheap as that design can be: a per-CPU table (no sharing,
 * no atomics) and a branchless scan. */
#include "common.bpf.h"

struct scan_gateway {
	__u16 port;		/* host byte order */
	__u16 pad;
	__u32 weight;
	__u64 packets;
};

struct scan_table {
	__u32 n;		/* gateways in gw[0..n) */
	__u32 pad;
	__u64 service;		/* service datagrams sent to a gateway */
	struct scan_gateway gw[BENCH_MAX_GATEWAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_table);
} scan_table SEC(".maps");

SEC("xdp")
int scan_lowest(struct xdp_md *ctx)
{
	struct udphdr *udp = service_datagram(ctx);
	struct scan_table *t;
	__u64 best_packets, best_weight;
	__u32 zero = 0, n, best = 0;

	if (!udp)
		return XDP_PASS;
	t = bpf_map_lookup_elem(&scan_table, &zero);
	if (!t || !t->n)
		return XDP_PASS;
	n = t->n;
	best_packets = t->gw[0].packets;
	best_weight = t->gw[0].weight;
	for (__u32 i = 1; i < BENCH_MAX_GATEWAYS; i++) {
		__u64 packets, weight;
		__s64 lower;

		if (i >= n)
			break;
		packets = t->gw[i].packets;
		weight = t->gw[i].weight;
		/* packets/weight < best_packets/best_weight, cross-multiplied; ties keep the first */
		lower = less_mask(packets * best_weight, best_packets * weight);
		best ^= (best ^ i) & lower;
		best_packets ^= (best_packets ^ packets) & lower;
		best_weight ^= (best_weight ^ weight) & lower;
	}
	best &= BENCH_MAX_GATEWAYS - 1;
	t->gw[best].packets++;
	t->service++;
	udp_set_dest(udp, bpf_htons(t->gw[best].port));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
