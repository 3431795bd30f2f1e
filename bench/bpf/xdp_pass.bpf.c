// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Baseline: the cheapest XDP program there is. Its cost is the test harness's own. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
