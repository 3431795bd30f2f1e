/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What the benchmark-only designs share with ebpflb's packet path: the same parser, the
 * same checksum update, the same service port test. Only the choice of gateway differs. */
#ifndef COMMON_BPF_H
#define COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "packet/parsing.bpf.h"
#include "packet/csum.bpf.h"

#define BENCH_MAX_GATEWAYS 256	/* as ebpflb's MAX_GATEWAYS */

const volatile __u16 service_port SEC(".rodata.bench") = 2152;

/* Finds the UDP header of a datagram for the service port; NULL for anything else. */
static __always_inline struct udphdr *service_datagram(struct xdp_md *ctx)
{
	struct hdr_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct udp_view v = {};

	if (parse_udp(&c, &v) != PARSE_UDP)
		return NULL;
	if (bpf_ntohs(v.udp->dest) != service_port)
		return NULL;
	return v.udp;
}

/* -1 when a < b, else 0, without a branch (a - b must fit in 63 bits, signed or not). The asm
 * hides the difference from clang, which would turn the selects below into branches; the
 * verifier would then walk every combination of picks and stop at its instruction limit. */
static __always_inline __s64 less_mask(__u64 a, __u64 b)
{
	__u64 difference = a - b;

	asm volatile("" : "+r"(difference));
	return (__s64)difference >> 63;
}

#endif /* COMMON_BPF_H */
