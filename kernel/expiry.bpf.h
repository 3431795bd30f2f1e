/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Expiry: dynamic gateways not heard from for lb_config.expiry_ns leave the table. Run on the
 * packet path at most once per jiffy and CPU, and by the control program's sweep. */
#ifndef EXPIRY_BPF_H
#define EXPIRY_BPF_H

#define NO_DEADLINE (~0ULL)

struct expire_ctx {
	struct lb_state *st;
	struct port_index *ix;
	struct cpu_data *cpu;
	__u64 now;
	__u64 next;		/* earliest deadline among the gateways that stay */
};

/* Checks one slot lock-free, and removes it under the lock if it is still stale. */
static long expire_step(__u64 slot, struct expire_ctx *c)
{
	struct lb_state *st = c->st;
	struct gateway *g = &st->gw[slot & (MAX_GATEWAYS - 1)];
	__u64 deadline = g->last_seen_ns + lb_config.expiry_ns;
	__u16 port = g->port;
	int removed = 0;

	if (!port || g->is_static)
		return 0;
	if (deadline > c->now) {
		if (deadline < c->next)
			c->next = deadline;
		return 0;
	}
	bpf_spin_lock(&st->lock);
	if (g->port == port && !g->is_static && g->last_seen_ns + lb_config.expiry_ns <= c->now) {
		slot_release(st, c->ix, slot);
		__sync_fetch_and_add(&st->version, 1);	/* as in table_apply */
		removed = 1;
	}
	bpf_spin_unlock(&st->lock);
	if (removed) {
		if (c->cpu)
			c->cpu->global.expired++;
		trace("expire port=%u", port);
	}
	return 0;
}

/* Removes dynamic gateways whose last registration is older than the expiry time.
 * Global, so the verifier checks it once rather than at every call site. */
__noinline int expire_gateways(__u64 now)
{
	struct expire_ctx c = { .now = now, .next = NO_DEADLINE };

	c.st = shared_state();
	c.ix = port_index();
	c.cpu = this_cpu_data();
	if (!c.st || !c.ix)
		return 0;
	bpf_loop(MAX_GATEWAYS, expire_step, &c, 0);
	/* a gateway added during the scan may be missing from c.next, but its deadline is
	 * at least now + lb_config.expiry_ns: sweeping by then never misses it */
	if (c.next > now + lb_config.expiry_ns)
		c.next = now + lb_config.expiry_ns;
	c.st->next_expiry_ns = c.next;
	return 0;
}

#endif /* EXPIRY_BPF_H */
