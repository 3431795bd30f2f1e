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
#define CHECKSUM_PARTIAL 3	/* include/linux/skbuff.h */

/* Linux 6.2; the verifier turns it into a register move. Older kernels load the object without
 * this program (ebpflb/dataplane/loading.py): reply NAT needs tcx, 6.6, anyway. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

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
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);	/* inlined: the same pointer */
	__be16 from, to;
	__u16 source, check;

	if (!lb_config.reply_nat || !st || parse_udp(&c, &v) != PARSE_UDP || v.fragmented)
		return TC_ACT_OK;
	source = bpf_ntohs(v.udp->source);
	if (source == lb_config.service_port || bpf_ntohs(v.udp->dest) == lb_config.reg_port ||
	    !is_gateway_port(st, source))
		return TC_ACT_OK;
	from = v.udp->source;
	to = bpf_htons(lb_config.service_port);
	v.udp->source = to;
	/* what bpf_l4_csum_replace(BPF_F_MARK_MANGLED_0) does, without its ~30 ns call: with
	 * CHECKSUM_PARTIAL (lo, TX offload) the field holds only the pseudo-header sum and a
	 * port is not part of it; a checksum of 0 stays 0, a computed 0 is sent as 0xffff */
	if (BPF_CORE_READ_BITFIELD(kskb, ip_summed) != CHECKSUM_PARTIAL && v.udp->check) {
		check = csum_replace16(v.udp->check, from, to);
		v.udp->check = check ? check : 0xffff;
	}
	cpu = this_cpu_data();
	if (cpu)
		cpu->global.replies_nat++;
	return TC_ACT_OK;
}

#endif /* REPLY_NAT_BPF_H */
