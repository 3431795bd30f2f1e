/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Smooth weighted round-robin (nginx's algorithm), precomputed as a schedule.
 *
 * Packets only step a per-CPU cursor through the published schedule: O(1), lock-free.
 * The schedule is rebuilt when a registration changes membership or a weight, into the
 * inactive buffer, then published with one atomic exchange. Its length is one full cycle,
 * sum(weights) / gcd(weights), capped at SCHED_SIZE; beyond that it holds the first
 * SCHED_SIZE picks, where each gateway's count is within a few picks of its exact share
 * (well under 0.1 percentage points). */
#ifndef SCHEDULER_BPF_H
#define SCHEDULER_BPF_H

#define BUILD_ROUNDS 4	/* rebuilds one builder does before leaving the rest to the next event */

static __always_inline __u64 gcd64(__u64 a, __u64 b)
{
	/* 64 Euclid steps cover any pair of weights below 2^32 */
	for (int i = 0; i < 64 && b; i++) {
		__u64 t = a % b;

		a = b;
		b = t;
	}
	return a;
}

struct build_ctx {
	struct lb_state *st;
	struct build_scratch *s;
	struct schedule *out;
};

/* Copies live gateways in slot order. Lock-free: a change that races with the copy bumps
 * the version read before it, so the builder sees the mismatch and builds again. */
static long snapshot_step(__u64 slot, struct build_ctx *c)
{
	struct gateway *g = &c->st->gw[slot & (MAX_GATEWAYS - 1)];
	struct build_scratch *s = c->s;
	__u32 weight = g->weight, n = s->n;
	__u16 port = g->port;

	if (!port || !weight)
		return 0;
	s->slot[n & (MAX_GATEWAYS - 1)] = slot;
	s->port[n & (MAX_GATEWAYS - 1)] = port;
	s->weight[n & (MAX_GATEWAYS - 1)] = weight;
	s->current[n & (MAX_GATEWAYS - 1)] = 0;
	s->total += weight;
	s->n = n + 1;
	s->gcd = gcd64(weight, s->gcd);
	return 0;
}

/* One nginx step: every gateway gains its weight, the largest (first on ties) is picked
 * and pays back the total. The winner is kept in map memory, not a register, so the
 * verifier does not track its value and checks the bounded loop in one pass per gateway. */
static long swrr_step(__u64 t, struct build_ctx *c)
{
	struct build_scratch *s = c->s;
	__s64 best_current = 0;
	__u32 n = s->n, best;

#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MAX_GATEWAYS; i++) {
		__s64 current;

		if (i >= n)
			break;
		current = s->current[i] + s->weight[i];
		s->current[i] = current;
		if (i == 0 || current > best_current) {
			best_current = current;
			s->best = i;
		}
	}
	best = s->best & (MAX_GATEWAYS - 1);
	s->current[best] -= s->total;
	c->out->entry[t & (SCHED_SIZE - 1)].slot = s->slot[best];
	c->out->entry[t & (SCHED_SIZE - 1)].port = s->port[best];
	return 0;
}

/* Builds the schedule for the current table into the inactive buffer and publishes it.
 * Returns the table version it was built from. */
static __always_inline __u32 build_and_publish(struct lb_state *st, struct build_scratch *s,
					       struct cpu_data *cpu)
{
	struct build_ctx c = { .st = st, .s = s };
	__u32 next = st->active ^ 1, version;
	__u64 len;

	c.out = bpf_map_lookup_elem(&lb_schedules, &next);
	if (!c.out)
		return st->built_version;
	version = st->version;
	/* x86 keeps loads in order: the copy below is at least as new as this version */
	asm volatile("" ::: "memory");
	s->n = 0;
	s->total = 0;
	s->gcd = 0;
	bpf_loop(MAX_GATEWAYS, snapshot_step, &c, 0);
	len = s->gcd ? s->total / s->gcd : 0;
	if (len > SCHED_SIZE)
		len = SCHED_SIZE;
	bpf_loop(len, swrr_step, &c, 0);
	c.out->len = len;
	c.out->gen = __sync_add_and_fetch(&st->schedule_gen, 1);
	/* full barrier: the schedule's contents are visible before it becomes active */
	__sync_lock_test_and_set(&st->active, next);
	if (cpu)
		cpu->global.rebuilds++;
	return version;
}

static __always_inline struct lb_state *shared_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_state, &zero);
}

static __always_inline struct cpu_data *this_cpu_data(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_percpu, &zero);
}

struct rebuild_ctx {
	struct lb_state *st;
	struct build_scratch *s;
	struct cpu_data *cpu;
};

static long rebuild_round(__u64 round, struct rebuild_ctx *c)
{
	struct lb_state *st = c->st;

	if (st->built_version == st->version)
		return 1;
	if (__sync_lock_test_and_set(&st->building, 1))
		return 1;	/* the CPU that builds now re-checks the version when done */
	st->built_version = build_and_publish(st, c->s, c->cpu);
	__sync_lock_test_and_set(&st->building, 0);
	return 0;
}

/* Rebuilds until the schedule matches the table, a bounded number of times; a change left
 * over is picked up by the next datagram, which sees built_version != version.
 * Global, so the verifier checks it once rather than at every call site. */
__noinline int rebuild_schedule(void)
{
	struct rebuild_ctx c = { .st = shared_state(), .cpu = this_cpu_data() };
	__u32 zero = 0;

	c.s = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!c.st || !c.s)
		return 0;
	bpf_loop(BUILD_ROUNDS, rebuild_round, &c, 0);
	return 0;
}

#define LIVE_PROBES 8	/* entries tried when the picked gateway was just removed */

/* Picks the next schedule entry for this CPU; NULL when the schedule is empty. */
static __always_inline struct sched_entry *schedule_next(struct lb_state *st, struct cpu_data *cpu)
{
	__u32 key = st->active & 1;
	struct schedule *sched = bpf_map_lookup_elem(&lb_schedules, &key);
	struct sched_entry *pick;
	__u32 pos, next;

	if (!sched || !sched->len)
		return NULL;
	if (cpu->gen != sched->gen) {
		/* a new schedule starts its cycle from the beginning on every CPU */
		cpu->gen = sched->gen;
		cpu->cursor = 0;
	}
	pos = cpu->cursor;
	next = pos + 1;
	cpu->cursor = next < sched->len ? next : 0;
	pick = &sched->entry[pos & (SCHED_SIZE - 1)];
	if (st->built_version == st->version)
		return pick;

	/* the table changed and this schedule is not rebuilt yet (another CPU is on it):
	 * trust only entries whose gateway is still in the table */
	for (__u32 i = 0; i < LIVE_PROBES; i++) {
		pick = &sched->entry[((pos + i) % sched->len) & (SCHED_SIZE - 1)];
		if (pick->port && st->gw[pick->slot & (MAX_GATEWAYS - 1)].port == pick->port)
			return pick;
	}
	return NULL;
}

#endif /* SCHEDULER_BPF_H */
