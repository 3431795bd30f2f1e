// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Reference point: ebpflb's parser and service port test, then XDP_PASS. The difference to
 * ebpflb is the cost of choosing a gateway, rewriting the port and counting. */
#include "common.bpf.h"

SEC("xdp")
int parse_only(struct xdp_md *ctx)
{
	struct udphdr *udp = service_datagram(ctx);

	/* the verdict depends on the parse, so the compiler cannot drop it */
	return udp ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
