// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The replay harness of the tc programs: the reply NAT rewrites the source port, so every
 * repetition first puts the reply's source port and UDP checksum back, then tail-calls the
 * program under test (ebpflb's tc program, or the pass-through baseline below). */
#include "replay.bpf.h"

struct tc_replay_config {
	__u32 udp_offset;
	__u16 source;		/* network byte order */
	__u16 check;
};

const volatile struct tc_replay_config tc_replay_config SEC(".rodata.replay") = {};

SEC("tc")
int tc_replay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct udphdr *udp = data + tc_replay_config.udp_offset;

	if ((void *)(udp + 1) > end)
		return 2;	/* TC_ACT_SHOT: the run's verdict shows it */
	udp->source = tc_replay_config.source;
	udp->check = tc_replay_config.check;
	bpf_tail_call(skb, &replay_target, 0);
	return 2;
}

/* The baseline: a tc program that lets every packet through. */
SEC("tc")
int tc_pass(struct __sk_buff *skb)
{
	return 0;	/* TC_ACT_OK */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
