// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Rejected design (b): nginx's smooth weighted round-robin stepped per datagram, over one
 * shared table under a bpf_spin_lock: every gateway gains its weight, the largest current
 * weight (first on ties) is picked and pays back the total. O(N) inside the lock. */
#include "common.bpf.h"

struct swrr_gateway {
	__u16 port;		/* host byte order */
	__u16 pad;
	__u32 weight;
	__s64 current;
	__u64 packets;
};

struct swrr_table {
	struct bpf_spin_lock lock;
	__u32 n;		/* gateways in gw[0..n) */
	__u64 total;		/* sum of their weights */
	__u64 service;		/* service datagrams sent to a gateway */
	struct swrr_gateway gw[BENCH_MAX_GATEWAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct swrr_table);
} swrr_table SEC(".maps");

SEC("xdp")
int locked_swrr(struct xdp_md *ctx)
{
	struct udphdr *udp = service_datagram(ctx);
	struct swrr_table *t;
	__s64 current, best_current;
	__u32 zero = 0, n, best = 0;
	__u16 port;

	if (!udp)
		return XDP_PASS;
	t = bpf_map_lookup_elem(&swrr_table, &zero);
	if (!t)
		return XDP_PASS;
	bpf_spin_lock(&t->lock);
	n = t->n;
	if (!n) {
		bpf_spin_unlock(&t->lock);
		return XDP_PASS;
	}
	best_current = t->gw[0].current + t->gw[0].weight;
	t->gw[0].current = best_current;
	for (__u32 i = 1; i < BENCH_MAX_GATEWAYS; i++) {
		__s64 higher;

		if (i >= n)
			break;
		current = t->gw[i].current + t->gw[i].weight;
		t->gw[i].current = current;
		/* current > best_current; ties keep the first */
		higher = less_mask(best_current, current);
		best ^= (best ^ i) & higher;
		best_current ^= (best_current ^ current) & higher;
	}
	best &= BENCH_MAX_GATEWAYS - 1;
	t->gw[best].current -= t->total;
	t->gw[best].packets++;
	t->service++;
	port = t->gw[best].port;
	bpf_spin_unlock(&t->lock);
	udp_set_dest(udp, bpf_htons(port));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
