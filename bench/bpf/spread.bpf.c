// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The NIC-like topology's spread reference (bench/e2e): unweighted round robin over N ports
 * with a per-CPU cursor, the least a per-datagram spread can cost. ebpflb's weighted schedule
 * is compared with it. */
#include "common.bpf.h"

struct spread_config {
	__u32 n;				/* ports in use, 1..BENCH_MAX_GATEWAYS */
	__u16 port[BENCH_MAX_GATEWAYS];		/* host byte order */
};

const volatile struct spread_config spread SEC(".rodata.spread") = { .n = 1 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} spread_cursor SEC(".maps");

SEC("xdp")
int spread_xdp(struct xdp_md *ctx)
{
	struct udphdr *udp = service_datagram(ctx);
	__u32 zero = 0, *cursor, i;

	if (!udp)
		return XDP_PASS;
	cursor = bpf_map_lookup_elem(&spread_cursor, &zero);
	if (!cursor)
		return XDP_PASS;
	i = *cursor;
	*cursor = i + 1 < spread.n ? i + 1 : 0;
	udp_set_dest(udp, bpf_htons(spread.port[i & (BENCH_MAX_GATEWAYS - 1)]));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
