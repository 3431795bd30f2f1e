/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The gateway table: registrations, ownership, heartbeats, weight changes and removals
 * (expiry is in expiry.bpf.h). Both entry points (registration datagrams in XDP, the control program) call these,
 * so in-kernel and user-space registrations share one definition. */
#ifndef REGISTRY_BPF_H
#define REGISTRY_BPF_H

enum reg_event {
	REG_HEARTBEAT,	/* known gateway, same weight */
	REG_NEW,
	REG_WEIGHT,	/* known gateway, new weight */
	REG_REMOVED,	/* weight 0 */
	REG_NOOP,	/* weight 0 for a port with no gateway */
};

#define REG_MAKE_STATIC	1	/* CTL_ADD_STATIC: the gateway never expires */
#define REG_MUST_EXIST	2	/* CTL_SET_WEIGHT: only change a known gateway */
#define REG_FROM_SOURCE	4	/* a registration: owner is its source, port range applies */

/* One change of the table. Registrations carry their source address: the gateway
 * belongs to the address that created it, and only that address may change it. */
struct reg_request {
	__u16 port;
	__u16 flags;		/* REG_* */
	__u32 weight;
	__u64 now;
	__u32 owner[4];		/* REG_FROM_SOURCE: source address, IPv4 as ::ffff:a.b.c.d */
};

static __always_inline int same_owner(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

#define REJECTED(reason) (-(int)(reason) - 1)

/* Takes a free slot (caller holds the lock); -1 when the table is full. */
static __always_inline int slot_alloc(struct lb_state *st)
{
	if (st->free_top) {
		st->free_top--;
		return st->free_slots[st->free_top & (MAX_GATEWAYS - 1)];
	}
	if (st->slots_used < MAX_GATEWAYS)
		return st->slots_used++;
	return -1;
}

/* Empties a slot (caller holds the lock). */
static __always_inline void slot_release(struct lb_state *st, struct port_index *ix, __u32 slot)
{
	struct gateway *g = &st->gw[slot & (MAX_GATEWAYS - 1)];

	__u32 index = st->live_index[slot & (MAX_GATEWAYS - 1)], last;

	ix->slot_of_port[READ_ONCE(g->port)] = 0;	/* read here: a bounded u16, whatever the caller knows */
	WRITE_ONCE(g->port, 0);
	g->weight = 0;
	g->is_static = 0;
	if (g->down) {
		g->down = 0;
		st->down_count--;
	}
	st->free_slots[st->free_top & (MAX_GATEWAYS - 1)] = slot;
	st->free_top++;
	/* the last live slot fills the hole: the live list stays dense */
	st->count--;
	last = st->live_slots[st->count & (MAX_GATEWAYS - 1)];
	st->live_slots[index & (MAX_GATEWAYS - 1)] = last;
	st->live_index[last & (MAX_GATEWAYS - 1)] = index;
}

/* Appends a slot to the live list (caller holds the lock). */
static __always_inline void live_append(struct lb_state *st, __u32 slot)
{
	st->live_index[slot & (MAX_GATEWAYS - 1)] = st->count;
	st->live_slots[st->count & (MAX_GATEWAYS - 1)] = slot;
	st->count++;
}

/* Applies one registration; O(1) under the table lock. Returns an enum reg_event or
 * REJECTED(reason), and the gateway's slot in *slot. */
static __always_inline int table_apply(struct lb_state *st, struct port_index *ix,
				       const struct reg_request *r, __u32 *slot)
{
	struct gateway *g;
	__u32 found;
	int ret, free;

	bpf_spin_lock(&st->lock);
	found = ix->slot_of_port[r->port];
	if (!found) {
		if (r->flags & REG_MUST_EXIST) {
			ret = REJECTED(REJECT_UNKNOWN_GATEWAY);
			goto out;
		}
		if (!r->weight) {
			ret = REG_NOOP;
			goto out;
		}
		free = slot_alloc(st);
		if (free < 0) {
			ret = REJECTED(REJECT_TABLE_FULL);
			goto out;
		}
		g = &st->gw[free & (MAX_GATEWAYS - 1)];
		g->weight = r->weight;
		g->is_static = !!(r->flags & REG_MAKE_STATIC);
		g->last_seen_ns = r->now;
		for (int k = 0; k < 4; k++)
			g->owner[k] = r->flags & REG_FROM_SOURCE ? r->owner[k] : 0;
		WRITE_ONCE(g->port, r->port);
		ix->slot_of_port[r->port] = free + 1;
		live_append(st, free);
		if (!g->is_static && r->now + lb_config.expiry_ns < st->next_expiry_ns)
			st->next_expiry_ns = r->now + lb_config.expiry_ns;
		*slot = free;
		ret = REG_NEW;
		goto changed;
	}

	*slot = found - 1;
	g = &st->gw[(found - 1) & (MAX_GATEWAYS - 1)];
	if ((r->flags & REG_FROM_SOURCE) && !same_owner(g->owner, r->owner)) {
		ret = REJECTED(REJECT_NOT_OWNER);
		goto out;
	}
	if (!r->weight) {
		slot_release(st, ix, found - 1);
		ret = REG_REMOVED;
		goto changed;
	}
	g->last_seen_ns = r->now;
	g->is_static |= !!(r->flags & REG_MAKE_STATIC);
	if (g->weight == r->weight) {
		ret = REG_HEARTBEAT;
		goto out;
	}
	g->weight = r->weight;
	ret = REG_WEIGHT;
changed:
	/* fully ordered: the table stores above are visible before the new version, which
	 * the schedule builder reads with a fully ordered operation before copying the table */
	__sync_fetch_and_add(&st->version, 1);
out:
	bpf_spin_unlock(&st->lock);
	return ret;
}

struct zero_ctx {
	__u32 slot;
};

static long zero_gateway_counters_on_cpu(__u64 cpu, struct zero_ctx *z)
{
	__u32 key = 0;
	struct cpu_data *d = bpf_map_lookup_percpu_elem(&lb_percpu, &key, cpu);
	struct gateway_counters *gc;

	if (!d)
		return 1;	/* past the last possible CPU */
	gc = &d->gw[z->slot & (MAX_GATEWAYS - 1)];
	d->global.departed_packets += gc->packets;
	d->global.departed_bytes += gc->bytes;
	gc->packets = 0;
	gc->bytes = 0;
	return 0;
}

/* A reused slot must not inherit the previous gateway's counters; they move to the departed
 * totals on the same CPU, so the sum over all slots plus those totals never decreases. */
static __always_inline void zero_gateway_counters(__u32 slot)
{
	struct zero_ctx z = { .slot = slot };

	bpf_loop(8192, zero_gateway_counters_on_cpu, &z, 0);
}

static __always_inline const char *reject_word(__u32 reason)
{
	switch (reason) {
	case REJECT_NOT_LOOPBACK: return "source";
	case REJECT_SHORT_PAYLOAD: return "short";
	case REJECT_WEIGHT_RANGE: return "weight";
	case REJECT_TABLE_FULL: return "full";
	case REJECT_MALFORMED: return "malformed";
	case REJECT_UNKNOWN_GATEWAY: return "unknown";
	case REJECT_NOT_OWNER: return "owner";
	case REJECT_PORT_NOT_ALLOWED: return "port";
	default: return "request";
	}
}

/* Counts and traces a refused registration; returns REJECTED(reason). */
static __always_inline int reject(struct cpu_data *cpu, __u32 port, __u32 weight, __u32 reason)
{
	if (cpu && reason < NR_REJECT_REASONS)
		cpu->global.reg_rejected[reason]++;
	trace("reject port=%u weight=%u reason=%s", port, weight, reject_word(reason));
	return REJECTED(reason);
}

/* Lets user space read the configuration the running program was loaded with. */
static __always_inline void publish_config(struct lb_state *st)
{
	st->config = lb_config;
	if (!st->abi_version)	/* kept if set: it names the creator of the pins */
		st->abi_version = EBPFLB_ABI_VERSION;
}

/* Validates and applies a change of the table; returns 0 or REJECTED(reason).
 * Global, so the verifier checks it once rather than at every call site. */
__noinline int registry_update(struct reg_request *r)
{
	struct lb_state *st = shared_state();
	struct port_index *ix = port_index();
	struct cpu_data *cpu = this_cpu_data();
	__u32 slot = 0, port, weight;
	int ret;

	if (!r || !st || !ix)
		return REJECTED(REJECT_BAD_REQUEST);
	port = r->port;
	weight = r->weight;
	if (!port)
		return reject(cpu, port, weight, REJECT_BAD_REQUEST);
	if (weight > MAX_WEIGHT)
		return reject(cpu, port, weight, REJECT_WEIGHT_RANGE);
	if ((r->flags & REG_FROM_SOURCE) && (port < lb_config.gw_port_min || port > lb_config.gw_port_max))
		return reject(cpu, port, weight, REJECT_PORT_NOT_ALLOWED);
	ret = table_apply(st, ix, r, &slot);
	if (ret < 0)
		return reject(cpu, port, weight, -ret - 1);
	if (cpu)
		cpu->global.reg_accepted++;
	publish_config(st);
	switch (ret) {
	case REG_NEW:
		zero_gateway_counters(slot);
		trace("add port=%u weight=%u slot=%u", r->port, r->weight, slot);
		break;
	case REG_WEIGHT:
		trace("weight port=%u weight=%u", r->port, r->weight);
		break;
	case REG_REMOVED:
		trace("remove port=%u", r->port);
		break;
	}
	schedule_build(BUILD_ONE_STEP);
	return 0;
}

#endif /* REGISTRY_BPF_H */
