// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The replay harness (see replay.bpf.c) for many clients: it also gives the datagram the next
 * of `clients` source ports in turn (template port + 0, 1, ...; UDP checksum updated), so a
 * program with flow affinity sees a steady set of flows, each coming back every `clients`
 * datagrams, as from a NIC that serves many clients. */
#include "replay.bpf.h"
#include "packet/csum.bpf.h"

struct replay_config {
	__u32 udp_offset;	/* where the UDP header starts in the frame */
	__u16 dest;		/* the template's destination port, network byte order */
	__u16 check;		/* the template's UDP checksum, as stored */
	__u16 source;		/* the template's source port, network byte order */
	__u16 clients;		/* distinct source ports, at least 1 */
};

const volatile struct replay_config replay_config SEC(".rodata.replay") = { .clients = 1 };

__u32 next_client;	/* one injecting thread runs this: a plain counter will do */

SEC("xdp")
int replay_clients(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + replay_config.udp_offset;
	__u32 client = next_client;
	__be16 port;
	__u16 check;

	if ((void *)(udp + 1) > end)
		return XDP_ABORTED;
	next_client = client + 1 < replay_config.clients ? client + 1 : 0;
	port = __builtin_bswap16(__builtin_bswap16(replay_config.source) + (__u16)client);
	udp->dest = replay_config.dest;
	udp->source = port;
	check = csum_replace16(replay_config.check, replay_config.source, port);
	udp->check = check ? check : 0xffff;
	bpf_tail_call(ctx, &replay_target, 0);
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
