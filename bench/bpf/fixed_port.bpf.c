// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The NIC-like topology's ceiling (bench/e2e): every service datagram goes to one fixed port,
 * checksum kept valid. The same parse and rewrite as ebpflb, no choice of gateway. */
#include "common.bpf.h"

const volatile __u16 fixed_port SEC(".rodata.fixed") = 4001;

SEC("xdp")
int fixed_port_xdp(struct xdp_md *ctx)
{
	struct udphdr *udp = service_datagram(ctx);

	if (udp)
		udp_set_dest(udp, bpf_htons(fixed_port));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
