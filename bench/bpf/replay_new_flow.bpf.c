// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The replay harness (see replay.bpf.c) for a new flow every repetition: it also gives the
 * datagram the next client of a counter, 16 source addresses times 65536 source ports
 * (checksums updated), so with --affinity each one misses the 65536-flow LRU table: a client
 * comes back only after a million others, long after its flow was evicted. */
#include "replay.bpf.h"
#include "packet/csum.bpf.h"

struct replay_config {
	__u32 udp_offset;	/* an IPv4 header of 20 bytes comes before */
	__u16 dest;		/* the template's fields, network byte order */
	__u16 check;
	__u16 source;
	__u16 addr_low;		/* low half of the source address */
	__u16 ip_check;
	__u16 pad;
};

const volatile struct replay_config replay_config SEC(".rodata.replay") = {};

__u32 next_client;	/* one benchmark thread runs this: a plain counter will do */

SEC("xdp")
int replay_new_flow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + replay_config.udp_offset;
	struct iphdr *ip = (void *)udp - sizeof(*ip);
	__u32 client = next_client++ & 0xFFFFF;
	__be16 port = __builtin_bswap16((__u16)client);
	/* the template's address plus 1..16 in its low half: never the template's own client */
	__be16 addr = __builtin_bswap16(__builtin_bswap16(replay_config.addr_low) + 1 + (client >> 16));
	__u16 check;

	if ((void *)ip < data || (void *)(udp + 1) > end)
		return XDP_ABORTED;
	udp->dest = replay_config.dest;
	udp->source = port;
	check = csum_replace16(replay_config.check, replay_config.source, port);
	udp->check = csum_replace16(check, replay_config.addr_low, addr);
	((__u16 *)&ip->saddr)[1] = addr;
	ip->check = csum_replace16(replay_config.ip_check, replay_config.addr_low, addr);
	bpf_tail_call(ctx, &replay_target, 0);
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
