/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Liveness from the gateway's own socket: a gateway lives while a UDP socket is bound on its
 * port. Checked on the packet path, so also without an ebpflb process and under xdp-loader:
 * the datagram about to go to a gateway first asks the stack's socket lookup, at most once per
 * jiffy per gateway and CPU (each CPU keeps the jiffy of its last check with its counters of
 * the gateway, so the check costs no shared cache line). A gateway
 * whose socket is gone gets nothing from the next check on: a registered one is removed, a
 * static one is marked down, stays listed and is left out of the schedule. Once per jiffy and
 * CPU a sweep looks at a few slots for a down gateway whose port has a socket again. */
#ifndef LIVENESS_BPF_H
#define LIVENESS_BPF_H

#define REVIVE_SCAN 32	/* slots one sweep looks at for a down gateway: 256 in 8 jiffies */

/* The gateway on slot has no socket: removed if registered, down if static. */
static __noinline void gateway_found_dead(__u32 slot, __u16 port)
{
	struct lb_state *st = shared_state();
	struct port_index *ix = port_index();
	struct cpu_data *cpu = this_cpu_data();
	struct gateway *g;
	int changed = 0;

	if (!st || !ix)
		return;
	slot &= MAX_GATEWAYS - 1;
	g = &st->gw[slot];
	bpf_spin_lock(&st->lock);
	if (g->port == port && !g->down) {
		if (g->is_static) {
			g->down = 1;
			st->down_count++;
		} else {
			slot_release(st, ix, slot);
		}
		__sync_fetch_and_add(&st->version, 1);	/* as in table_apply */
		changed = 1;
	}
	bpf_spin_unlock(&st->lock);
	if (changed) {
		if (cpu)
			cpu->global.found_dead++;
		trace("dead port=%u", port);
	}
}

/* A socket is bound again on a down static gateway's port. */
static __noinline void gateway_up_again(__u32 slot, __u16 port)
{
	struct lb_state *st = shared_state();
	struct gateway *g;
	int changed = 0;

	if (!st)
		return;
	g = &st->gw[slot & (MAX_GATEWAYS - 1)];
	bpf_spin_lock(&st->lock);
	if (g->port == port && g->down) {
		g->down = 0;
		st->down_count--;
		__sync_fetch_and_add(&st->version, 1);
		changed = 1;
	}
	bpf_spin_unlock(&st->lock);
	if (changed)
		trace("up port=%u", port);
}

/* The next down gateway among REVIVE_SCAN slots, as SCHED_ENTRY(slot, port); 0 if none. */
static __always_inline __u32 next_down_gateway(struct lb_state *st)
{
	__u32 start = READ_ONCE(st->revive_cursor), used = READ_ONCE(st->slots_used);

	if (start >= used)
		start = 0;	/* only slots ever handed out can hold a gateway */
	for (int k = 0; k < REVIVE_SCAN; k++) {
		__u32 slot = ITEM(start + k);
		struct gateway *g = &st->gw[slot];
		__u16 port = READ_ONCE(g->port);

		if (start + k >= used)
			break;
		if (port && READ_ONCE(g->down)) {
			WRITE_ONCE(st->revive_cursor, slot + 1);
			return SCHED_ENTRY(slot, port);
		}
	}
	WRITE_ONCE(st->revive_cursor, start + REVIVE_SCAN);
	return 0;
}

/* What the slow paths below need of the datagram: its 4-tuple (the stack's socket lookup
 * for a gateway's port uses the datagram's addresses) and the gateway picked for it. */
struct liveness_probe {
	struct bpf_sock_tuple tuple;
	__u32 size;
	__u32 pick;
};

/* The pick if its socket is still there, else another live gateway (0: none). Global, so the
 * verifier checks it once: the packet path calls it at most once per jiffy per gateway and CPU. */
__noinline int pick_checked(struct xdp_md *ctx, struct liveness_probe *p)
{
	struct lb_state *st = shared_state();
	struct cpu_data *cpu = this_cpu_data();
	__u32 pick, size;

	if (!p)
		return 0;
	pick = p->pick;
	size = p->size;
	if (!st || !cpu || size > sizeof(p->tuple))
		return pick;
	if (tuple_socket_bound(ctx, &p->tuple, size, bpf_htons(ENTRY_PORT(pick))))
		return pick;
	gateway_found_dead(ENTRY_SLOT(pick), ENTRY_PORT(pick));
	return live_fallback(st, cpu->cursor);
}

/* One down gateway whose port has a socket again comes back. Global, as above. */
__noinline int revive_checked(struct xdp_md *ctx, struct liveness_probe *p)
{
	struct lb_state *st = shared_state();
	__u32 down, size;

	if (!p || !st)
		return 0;
	size = p->size;
	down = next_down_gateway(st);
	if (down && size <= sizeof(p->tuple) &&
	    tuple_socket_bound(ctx, &p->tuple, size, bpf_htons(ENTRY_PORT(down))))
		gateway_up_again(ENTRY_SLOT(down), ENTRY_PORT(down));
	return 0;
}

/* Builds the probe for pick_checked. Declared here, not in pick_alive, so the compiler zeroes
 * it on the stack only on this slow path, not on every datagram. */
static __always_inline int pick_checked_probe(struct xdp_md *ctx, const struct udp_view *v, __u32 pick)
{
	struct liveness_probe p = { .pick = pick };

	p.size = udp_tuple_of(v, &p.tuple);
	return pick_checked(ctx, &p);
}

/* The pick, checked once per jiffy; another live gateway if its socket is gone (0: none). */
static __always_inline __u32 pick_alive(struct xdp_md *ctx, const struct udp_view *v,
					struct lb_state *st, struct cpu_data *cpu, __u32 pick)
{
	/* this CPU's counters of the gateway: a line the datagram writes anyway, and no other CPU does */
	struct gateway_counters *gc = &cpu->gw[ITEM(ENTRY_SLOT(pick))];

	if (likely(!lb_config.check_sockets || gc->checked_jiffies == cpu->jiffies))
		return pick;
	gc->checked_jiffies = cpu->jiffies;
	return pick_checked_probe(ctx, v, pick);
}

/* Once per jiffy and CPU, while a gateway is down: looks for a socket on one down gateway. */
static __always_inline void revive_sweep(struct xdp_md *ctx, const struct udp_view *v, struct lb_state *st)
{
	struct liveness_probe p = {};

	if (!lb_config.check_sockets || !READ_ONCE(st->down_count))
		return;
	p.size = udp_tuple_of(v, &p.tuple);
	revive_checked(ctx, &p);
}

#endif /* LIVENESS_BPF_H */
