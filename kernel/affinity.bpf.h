/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Flow affinity (--affinity SECONDS): the datagrams of one flow go to the gateway the
 * scheduler first chose for it while the flow keeps being seen within that time. A flow is
 * the client (address and port) or, with --affinity-key gtpu, the TEID of a GTPv1-U G-PDU.
 * New flows follow the weights; a flow whose gateway left or died moves to a live one at its
 * next datagram. The table is an LRU hash of FLOW_TABLE_SIZE flows: when it is full, a new
 * flow takes the place of the one seen least recently. In front of it, each CPU remembers the
 * flows it found there lately (lb_flow_cache), so a steady flow asks the table only now and then. */
#ifndef AFFINITY_BPF_H
#define AFFINITY_BPF_H

#define GTPU_FLAGS_MASK	0xF0	/* version (3 bits) and protocol type */
#define GTPU_V1_GTP	0x30	/* version 1, protocol type GTP */
#define GTPU_G_PDU	0xFF	/* message type of a user-plane datagram */

struct gtpu_header {
	__u8 flags;
	__u8 type;
	__be16 length;
	__be32 teid;
};

/* The flow a datagram belongs to. */
static __always_inline void flow_key_of(const struct udp_view *v, const struct hdr_cursor *c,
					struct flow_key *k)
{
	struct gtpu_header *gtp = c->pos;

	if (lb_config.affinity_key == AFFINITY_GTPU && (void *)(gtp + 1) <= c->end &&
	    (gtp->flags & GTPU_FLAGS_MASK) == GTPU_V1_GTP && gtp->type == GTPU_G_PDU) {
		k->teid = gtp->teid;
		k->kind = AFFINITY_GTPU;
		return;
	}
	packet_addr_16(v, ADDR_SOURCE, k->addr);
	k->port = v->udp->source;
	k->kind = AFFINITY_CLIENT;
}

static __always_inline __u32 flow_hash(const struct flow_key *k)
{
	__u32 h = k->addr[0] ^ k->addr[1] ^ k->addr[2] ^ k->addr[3] ^ k->teid ^ k->port;

	return (h * 0x9E3779B1u) >> (32 - FLOW_CACHE_BITS);	/* Fibonacci hashing: the top bits mix every input bit */
}

static __always_inline int same_flow(const struct flow_key *a, const struct flow_key *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] && a->addr[2] == b->addr[2] &&
	       a->addr[3] == b->addr[3] && a->teid == b->teid && a->port == b->port && a->kind == b->kind;
}

/* flow_pick's way through the flow table (for a steady flow, once per cache lifetime and CPU). */
static __always_inline __u32 flow_pick_in_table(struct xdp_md *ctx, const struct udp_view *v,
						struct lb_state *st, struct cpu_data *cpu,
						struct flow_key *k)
{
	struct flow *f;
	__u32 pick;

	f = bpf_map_lookup_elem(&lb_flows, k);
	if (f) {
		__u32 entry = READ_ONCE(f->entry);

		/* signed: another CPU may have seen it at a later jiffy than this CPU's clock */
		if ((__s64)(cpu->now_ns - READ_ONCE(f->seen_ns)) > (__s64)lb_config.affinity_ns) {
			cpu->global.flows_expired++;
		} else if (entry_is_live(st, entry)) {
			pick = pick_alive(ctx, v, st, cpu, entry);
			if (pick == entry) {
				if (READ_ONCE(f->seen_ns) != cpu->now_ns)
					WRITE_ONCE(f->seen_ns, cpu->now_ns);	/* a write per jiffy, not per datagram */
				return entry;
			}
			cpu->global.flows_moved++;	/* its gateway died just now */
		} else {
			cpu->global.flows_moved++;	/* its gateway left */
		}
	}
	pick = schedule_next(st, cpu, 0);	/* a new or moved flow: always checked */
	if (pick)
		pick = pick_alive(ctx, v, st, cpu, pick);
	if (!pick)
		return 0;
	if (f) {
		WRITE_ONCE(f->entry, pick);
		WRITE_ONCE(f->seen_ns, cpu->now_ns);
	} else {
		struct flow created = { .entry = pick, .seen_ns = cpu->now_ns };

		if (!bpf_map_update_elem(&lb_flows, k, &created, BPF_ANY))
			cpu->global.flows_created++;
	}
	return pick;
}

/* The gateway of this datagram's flow (0 if none is live). Kept while the flow is seen within
 * the affinity time and its gateway is live (checked as every pick is, see liveness.bpf.h). */
static __always_inline __u32 flow_pick(struct xdp_md *ctx, const struct udp_view *v,
				       const struct hdr_cursor *c, struct lb_state *st,
				       struct cpu_data *cpu)
{
	struct flow_key k = {};
	struct flow_cache_entry *cached;
	__u32 pick, fresh;

	flow_key_of(v, c, &k);
	cached = flow_cache_slot(flow_hash(&k));
	if (cached && (__s32)(cached->until - cpu->flow_tick) > 0 && same_flow(&cached->key, &k)) {
		__u32 entry = cached->entry;

		if (entry_is_live(st, entry) && pick_alive(ctx, v, st, cpu, entry) == entry)
			return entry;
	}
	pick = flow_pick_in_table(ctx, v, st, cpu, &k);
	if (pick && cached) {
		/* a cache hit does not refresh the flow's seen time in lb_flows, so an entry is used
		 * for at most 1/16 of the affinity time: a flow expires at most that much early */
		fresh = (lb_config.affinity_ns >> FLOW_CACHE_TICK_SHIFT) / 16;
		cached->key = k;
		cached->entry = pick;
		cached->until = cpu->flow_tick + (fresh < FLOW_CACHE_TICKS ? fresh : FLOW_CACHE_TICKS);
	}
	return pick;
}

#endif /* AFFINITY_BPF_H */
