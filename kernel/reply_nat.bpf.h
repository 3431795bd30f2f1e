/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Reply NAT, at tc egress: a datagram a gateway sends from its port leaves with the service
 * port as its source, so a client that sent to the service port (with a connected socket:
 * DNS resolvers, QUIC, DTLS) takes the reply as coming from where it sent.
 *
 * Stateless: ebpflb keeps no per-client state, so every UDP datagram leaving a live gateway's
 * port is taken for a reply, except those to the registration port (the gateway's own
 * heartbeats). A gateway that also talks to other peers must do so from another socket. */
#ifndef REPLY_NAT_BPF_H
#define REPLY_NAT_BPF_H

#define TC_ACT_OK 0

/* The slot's gateway, if a live gateway sends from this port. */
static __always_inline int is_gateway_port(struct lb_state *st, __u16 port)
{
	struct port_index *index = port_index();
	__u32 slot;

	if (!index)
		return 0;
	slot = READ_ONCE(index->slot_of_port[port]);
	return slot && READ_ONCE(st->gw[ITEM(slot - 1)].port) == port;
}

static __always_inline int reply_nat(struct __sk_buff *skb)
{
	struct hdr_cursor c = {
		.pos = (void *)(long)skb->data,
		.end = (void *)(long)skb->data_end,
	};
	struct lb_state *st = shared_state();
	struct cpu_data *cpu;
	struct udp_view v;
	__be16 from, to;
	__u32 udp_offset;
	__u16 source;

	if (!lb_config.reply_nat || !st || parse_udp(&c, &v) != PARSE_UDP || v.fragmented)
		return TC_ACT_OK;
	source = bpf_ntohs(v.udp->source);
	if (source == lb_config.service_port || bpf_ntohs(v.udp->dest) == lb_config.reg_port ||
	    !is_gateway_port(st, source))
		return TC_ACT_OK;
	from = v.udp->source;
	to = bpf_htons(lb_config.service_port);
	udp_offset = (void *)v.udp - (void *)(long)skb->data;
	v.udp->source = to;
	/* the kernel's helper, which knows the skb's checksum state: with CHECKSUM_PARTIAL (lo,
	 * TX offload) the field holds only the pseudo-header sum and a port is not part of it */
	bpf_l4_csum_replace(skb, udp_offset + offsetof(struct udphdr, check), from, to,
			    BPF_F_MARK_MANGLED_0 | sizeof(__u16));
	cpu = this_cpu_data();
	if (cpu)
		cpu->global.replies_nat++;
	return TC_ACT_OK;
}

#endif /* REPLY_NAT_BPF_H */
