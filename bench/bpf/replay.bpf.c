// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Benchmark harness. BPF_PROG_TEST_RUN with `repeat` runs the program again and again on one
 * buffer, so a program that rewrites the destination port would see its own output from the
 * second repetition on. This program first puts the datagram's original destination port and
 * UDP checksum back (two 16-bit stores), then tail-calls the program under test, so every
 * repetition sees the same datagram. Baselines go through the same harness: its cost cancels. */
#include "replay.bpf.h"

struct replay_config {
	__u32 udp_offset;	/* where the UDP header starts in the frame */
	__u16 dest;		/* original destination port, network byte order */
	__u16 check;		/* original UDP checksum, as stored in the frame */
};

const volatile struct replay_config replay_config SEC(".rodata.replay") = {};

SEC("xdp")
int replay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + replay_config.udp_offset;

	if ((void *)(udp + 1) > end)
		return XDP_ABORTED;
	udp->dest = replay_config.dest;
	udp->check = replay_config.check;
	bpf_tail_call(ctx, &replay_target, 0);
	return XDP_ABORTED;	/* an empty slot: the run's verdict shows it */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
