/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Smooth weighted round-robin, precomputed as a schedule that packets step through.
 *
 * The order: one cycle of L = sum(w) / gcd(w) positions gives gateway i exactly
 * c_i = w_i / gcd picks, and in every prefix of k positions its count is within 1 of
 * k * c_i / L. Pick j of gateway i (1-based) may not come before position ceil((j-1)L/c_i)
 * (1-based) and is due by floor(jL/c_i) + 1; these windows can always be met (Tijdeman's
 * chairman assignment), and earliest-deadline-first meets them. Deadlines sit in buckets
 * found with a two-level bitmap, so the cycle costs O(L + N). A cycle longer than SCHED_SIZE
 * is cut at SCHED_SIZE positions (with c_i = w_i, L = sum(w)): each count stays within 1 of
 * its exact share, under 0.03 percentage points. A short cycle is repeated to fill at least
 * half the buffer, so cursors keep their phase when the length changes.
 *
 * The build is spread over the datagrams that find it pending, a bounded step each, into a
 * buffer readers do not use; packets keep the published schedule until the new one is
 * complete. At most one build starts per jiffy, so changes at any rate cost bounded CPU and
 * every CPU switches schedules at most once per jiffy. Each CPU keeps its cursor across
 * publications: a change never restarts the cycle.
 *
 * Over 300 lines because the builder and the reader share one set of invariants (windows,
 * buffers, publication order) that a reader must check against each other in one place. */
#ifndef SCHEDULER_BPF_H
#define SCHEDULER_BPF_H

/* Step bounds: a datagram's build work stays near the VM's own p99 for a repeat-1 run (make
 * bench, section 3: p99 4.5 us at 256 gateways and 4096 entries, against 6.1 us with twice
 * these bounds, for about twice the datagrams per change). */
#ifndef FILL_EVENTS
#define FILL_EVENTS 64		/* releases and positions one datagram processes: bounds its build work */
#endif
#define SNAPSHOT_STEP 64	/* gateway slots one datagram copies */
#define START_STEP 64		/* gateways one datagram gives a first deadline (two divisions each) */
#define REPEAT_STEP 512	/* positions one datagram copies */
#define FALLBACK_PROBES 4	/* live-list entries tried when a schedule entry has left */

#define BUILD_ONE_STEP	0	/* the packet path: one bounded step, at most one build start per jiffy */
#define BUILD_COMPLETE	1	/* the control program: finish every pending build now */

static __always_inline __u32 gcd32(__u32 a, __u32 b)
{
	/* 48 Euclid steps cover any pair below 2^32 (Fibonacci numbers are the worst case) */
	for (int i = 0; i < 48 && b; i++) {
		__u32 t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/* Index of the lowest set bit of a non-zero word, by a de Bruijn multiply: the isolated bit
 * times the constant leaves a distinct pattern in the top 6 bits (BPF has no bit scan; this
 * measured faster than counting the ones below the bit). */
static const __u8 debruijn_bit[64] = {
	0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4,
	62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
	63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11,
	46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6,
};

static __always_inline __u32 lowest_bit(__u64 x)
{
	return debruijn_bit[((x & -x) * 0x03f79d71b4cb0a89ULL) >> 58];
}

#define ITEM(i)	((i) & (MAX_GATEWAYS - 1))
#define POS(p)	((p) & (SCHED_SIZE - 1))

/* The deadline queue's top: its summary word, the earliest deadline queued (valid while the
 * summary is not empty) and the late list head. A fill step keeps them in registers: each
 * position updates them, and through memory that is a chain of store-to-load forwarding.
 * Knowing the earliest deadline, a pop searches the bitmap only when a bucket empties. */
struct queue_top {
	__u64 summary;
	__u32 earliest;
	__u32 late;
};

/* Queues an item's next pick by its deadline; one due after the last position (its cycle's
 * last pick, or beyond a cut schedule) goes on the late list, taken only when nothing is due. */
static __always_inline void deadline_push(struct build_scratch *s, struct queue_top *q,
					  __u32 i, struct build_item *it)
{
	__u32 due = it->due_q, word = (due >> 6) & (DEADLINE_WORDS - 1);

	if (due >= s->cycle) {
		it->next = q->late;
		q->late = i + 1;
		return;
	}
	if (!q->summary || due < q->earliest)
		q->earliest = due;
	it->next = s->deadline_head[POS(due)];
	s->deadline_head[POS(due)] = i + 1;
	s->deadline_bits[word] |= 1ULL << (due & 63);
	q->summary |= 1ULL << word;
}

/* Takes the item whose next pick is due first; -1 if none (cannot happen: see the header). */
static __always_inline int deadline_pop(struct build_scratch *s, struct queue_top *q)
{
	__u32 word, due = POS(q->earliest), head;
	__u64 bits;

	if (!q->summary) {
		head = q->late;
		if (!head)
			return -1;
		q->late = s->item[ITEM(head - 1)].next;
		return head - 1;
	}
	head = s->deadline_head[due];
	if (!head)
		return -1;
	s->deadline_head[due] = s->item[ITEM(head - 1)].next;
	if (s->deadline_head[due])
		return head - 1;
	/* the bucket is empty: clear its bit, find the next earliest */
	word = (due >> 6) & (DEADLINE_WORDS - 1);
	bits = s->deadline_bits[word] & ~(1ULL << (due & 63));
	s->deadline_bits[word] = bits;
	if (!bits)
		q->summary &= ~(1ULL << word);
	if (q->summary) {
		word = lowest_bit(q->summary) & (DEADLINE_WORDS - 1);
		q->earliest = word * 64 + lowest_bit(s->deadline_bits[word]);
	}
	return head - 1;
}

static __always_inline struct queue_top queue_top_of(struct build_scratch *s)
{
	return (struct queue_top){
		.summary = s->deadline_summary,
		.earliest = s->deadline_earliest,
		.late = s->late_head,
	};
}

static __always_inline void queue_top_store(struct build_scratch *s, struct queue_top *q)
{
	s->deadline_summary = q->summary;
	s->deadline_earliest = q->earliest;
	s->late_head = q->late;
}

struct build_ctx {
	struct lb_state *st;
	struct build_scratch *s;
	struct schedule *out;
};

#define SNAPSHOT_UNROLL 16	/* slots per callback */

/* BUILD_SNAPSHOT, SNAPSHOT_UNROLL slots: copies live gateways in slot order, lock-free. A
 * change that races with the copy bumps the version after the one this build records, so it
 * is built next. */
static long snapshot_slots(__u64 i, struct build_ctx *c)
{
	struct build_scratch *s = c->s;

	for (int k = 0; k < SNAPSHOT_UNROLL; k++) {
		__u32 slot = ITEM(s->pos + i * SNAPSHOT_UNROLL + k), n = s->n;
		struct gateway *g = &c->st->gw[slot];
		__u32 weight = READ_ONCE(g->weight);
		__u16 port = READ_ONCE(g->port);

		if (!port || !weight || READ_ONCE(g->down))
			continue;
		s->item[ITEM(n)].entry = SCHED_ENTRY(slot, port);
		s->item[ITEM(n)].weight = weight;
		s->total += weight;
		if (s->gcd != 1)
			s->gcd = gcd32(weight, s->gcd);
		s->n = n + 1;
	}
	return 0;
}

#define START_UNROLL 8	/* items per callback */

/* BUILD_START, START_UNROLL items: reduce each weight and queue its first pick, due by
 * span / weight; in reverse slot order, so that equal deadlines pop in slot order. */
static long start_items(__u64 i, struct build_ctx *c)
{
	struct build_scratch *s = c->s;
	struct queue_top q = queue_top_of(s);
	long finished = 0;

	for (int k = 0; k < START_UNROLL; k++) {
		__u32 done = s->pos + i * START_UNROLL + k, index;
		struct build_item *it;

		if (done >= s->n) {
			finished = 1;
			break;
		}
		index = ITEM(s->n - 1 - done);
		it = &s->item[index];
		if (s->total / s->gcd <= SCHED_SIZE)
			it->weight /= s->gcd;
		it->picks = 0;
		it->step_q = s->span / it->weight;
		it->step_r = s->span % it->weight;
		it->due_q = it->step_q;
		it->due_r = it->step_r;
		deadline_push(s, &q, index, it);
	}
	queue_top_store(s, &q);
	return finished;
}

/* Places the earliest-due pick at pos and queues that gateway's next pick. */
static __always_inline int place(struct build_scratch *s, struct queue_top *q,
				 struct schedule *out, __u32 pos)
{
	struct build_item *it;
	__u32 index, release;
	int popped;

	popped = deadline_pop(s, q);
	if (popped < 0)
		return -1;
	index = ITEM(popped);
	it = &s->item[index];
	WRITE_ONCE(out->entry[POS(pos)], it->entry);
	if (++it->picks >= it->weight)
		return 0;
	/* the next pick may start at ceil(picks * span / weight) (1-based) */
	release = it->due_q + (it->due_r ? 1 : 0) - 1;
	it->due_q += it->step_q;
	it->due_r += it->step_r;
	if (it->due_r >= it->weight) {
		it->due_r -= it->weight;
		it->due_q++;
	}
	if (release <= pos + 1) {
		deadline_push(s, q, index, it);
	} else if (release < s->cycle) {
		it->next = s->release_head[POS(release)];
		s->release_head[POS(release)] = index + 1;
	}
	return 0;
}

#define FILL_UNROLL 4	/* events per callback: the queue's top stays in locals between them (8 exceeds the verifier's budget) */

/* BUILD_FILL, FILL_UNROLL events: each releases one pick that may start at the current
 * position or, when none is left to release, fills the position. A flat sequence of events
 * (at most one release per pick) rather than a loop of releases inside a loop of positions:
 * the verifier checks one body, and a step's work is bounded by its events. */
static long fill_events(__u64 unused, struct build_ctx *c)
{
	struct build_scratch *s = c->s;
	struct queue_top q = queue_top_of(s);
	__u32 pos = s->pos, cycle = s->cycle;
	long stop = 0;

	for (int k = 0; k < FILL_UNROLL; k++) {
		__u32 head;

		if (pos >= cycle) {
			stop = 1;
			break;
		}
		head = s->release_head[POS(pos)];
		if (head) {
			struct build_item *it = &s->item[ITEM(head - 1)];

			s->release_head[POS(pos)] = it->next;
			deadline_push(s, &q, head - 1, it);
			continue;
		}
		if (place(s, &q, c->out, pos) < 0) {
			s->cycle = s->len = pos;	/* defensive: publish what is filled */
			stop = 1;
			break;
		}
		pos++;
	}
	s->pos = pos;
	queue_top_store(s, &q);
	return stop;
}

#define REPEAT_UNROLL 64	/* entries copied per callback */

/* BUILD_REPEAT: whole copies of the cycle fill the rest of the schedule. */
static long repeat_positions(__u64 unused, struct build_ctx *c)
{
	struct build_scratch *s = c->s;
	__u32 pos = s->pos, cycle = s->cycle;

	for (int k = 0; k < REPEAT_UNROLL; k++) {
		if (pos >= s->len)
			break;
		c->out->entry[POS(pos)] = c->out->entry[POS(pos - cycle)];
		pos++;
	}
	s->pos = pos;
	return pos >= s->len;
}

/* After a cut schedule is filled, gateways still queued are taken off, so every list is
 * empty for the next build without clearing 16 KiB of list heads (cache-cold, that costs
 * more than the rest of a step). Every pick due within the cut was placed, so what is left
 * waits on the late list, which one store empties; the deadline lists are drained only in
 * case. A whole cycle leaves nothing queued. */
static long drain_leftover(__u64 i, struct build_ctx *c)
{
	struct queue_top q = queue_top_of(c->s);
	int popped;

	if (!q.summary) {
		c->s->late_head = 0;
		return 1;
	}
	popped = deadline_pop(c->s, &q);
	queue_top_store(c->s, &q);
	return popped < 0;
}

/* Publishes the finished schedule. The exchange is fully ordered: every entry and header
 * store above is visible before the new `published`, which readers load and then follow by
 * address (dependency ordering, as rcu_dereference) to the entries. */
static __always_inline void publish(struct build_ctx *c, __u32 published)
{
	struct cpu_data *cpu = this_cpu_data();

	c->out->len = c->s->len;
	c->out->cycle = c->s->cycle;
	c->out->version = c->s->version;
	c->out->gen = published >> 2;
	__sync_lock_test_and_set(&c->st->published, published);
	c->st->sched_version = c->s->version;
	if (cpu)
		cpu->global.rebuilds++;
}

/* One bounded step of the build state machine. Returns 1 when nothing is left to do. */
static __always_inline int build_step(struct lb_state *st, struct build_scratch *s, __u32 mode)
{
	struct build_ctx c = { .st = st, .s = s };
	__u32 key = s->buffer & (SCHED_BUFFERS - 1);
	__u64 jiffies;

	switch (s->phase) {
	case BUILD_IDLE:
		/* fully ordered read: pairs with the fully ordered version bump in the registry,
		 * so the table copied below is at least as new as this version */
		s->version = __sync_fetch_and_add(&st->version, 0);
		if (s->version == st->sched_version)
			return 1;
		jiffies = bpf_jiffies64();
		if (mode == BUILD_ONE_STEP && st->build_jiffies == jiffies)
			return 1;
		st->build_jiffies = jiffies;
		s->n = 0;
		s->total = 0;
		s->gcd = 0;
		s->pos = 0;
		s->buffer = ((st->published & (SCHED_BUFFERS - 1)) + 1) & (SCHED_BUFFERS - 1);
		s->phase = BUILD_SNAPSHOT;
		return 0;
	case BUILD_SNAPSHOT:
		bpf_loop(SNAPSHOT_STEP / SNAPSHOT_UNROLL, snapshot_slots, &c, 0);
		s->pos += SNAPSHOT_STEP;
		if (s->pos < MAX_GATEWAYS)
			return 0;
		if (s->n && s->total / s->gcd <= SCHED_SIZE) {
			s->cycle = s->total / s->gcd;
			s->span = s->cycle;
			/* whole cycles, at least half the buffer */
			s->len = s->cycle * (SCHED_SIZE / s->cycle);
		} else {
			s->cycle = s->n ? SCHED_SIZE : 0;
			s->span = s->total;
			s->len = s->cycle;
		}
		s->pos = 0;
		s->phase = BUILD_START;
		return 0;
	case BUILD_START:
		bpf_loop(START_STEP / START_UNROLL, start_items, &c, 0);
		s->pos += START_STEP;
		if (s->pos < s->n)
			return 0;
		s->pos = 0;
		s->phase = BUILD_FILL;
		return 0;
	case BUILD_FILL:
	case BUILD_REPEAT:
		break;
	default:
		s->phase = BUILD_IDLE;
		return 0;
	}

	c.out = bpf_map_lookup_elem(&lb_schedules, &key);
	if (!c.out) {
		s->phase = BUILD_IDLE;
		return 1;
	}
	if (s->phase == BUILD_FILL) {
		bpf_loop(FILL_EVENTS / FILL_UNROLL, fill_events, &c, 0);
		if (s->pos < s->cycle)
			return 0;
		bpf_loop(MAX_GATEWAYS + 1, drain_leftover, &c, 0);
		s->phase = BUILD_REPEAT;
		return 0;
	}
	bpf_loop(REPEAT_STEP / REPEAT_UNROLL, repeat_positions, &c, 0);
	if (s->pos < s->len)
		return 0;
	publish(&c, (((st->published >> 2) + 1) << 2) | key);
	s->phase = BUILD_IDLE;
	return 0;
}

struct build_loop_ctx {
	struct lb_state *st;
	struct build_scratch *s;
	__u32 mode;
	__u32 done;
};

/* Takes the builder lock, runs one step, releases it. A CPU that finds the builder busy
 * goes on with the published schedule; the control program tries again. */
static long build_round(__u64 round, struct build_loop_ctx *c)
{
	if (__sync_lock_test_and_set(&c->st->building, 1))
		return c->mode == BUILD_ONE_STEP;
	c->done = build_step(c->st, c->s, c->mode);
	/* fully ordered: this step's stores are visible to the next builder */
	__sync_lock_test_and_set(&c->st->building, 0);
	return c->mode == BUILD_ONE_STEP || c->done;
}

/* Advances the schedule build: one step (packet path) or to completion (control program).
 * Global, so the verifier checks it once rather than at every call site. */
__noinline int schedule_build(__u32 mode)
{
	struct build_loop_ctx c = { .st = shared_state(), .s = build_scratch(), .mode = mode };

	if (!c.st || !c.s)
		return 0;
	if (mode == BUILD_ONE_STEP && c.s->phase == BUILD_IDLE &&
	    c.st->build_jiffies == bpf_jiffies64())
		return 0;	/* rate-limited: a build already started in this jiffy */
	/* a full build is under 30 steps; waiting for a busy builder is bounded too */
	bpf_loop(mode == BUILD_ONE_STEP ? 1 : 1 << 16, build_round, &c, 0);
	return 0;
}

/* A build is due or under way. Two plain loads: the fast path of every service datagram. */
static __always_inline int schedule_pending(struct lb_state *st)
{
	return READ_ONCE(st->sched_version) != READ_ONCE(st->version);
}

/* Any live gateway, from the dense live list: when the schedule's entry has left the table
 * (its build is pending) or no schedule is published yet. 0 if none is live. */
static __always_inline __u32 live_fallback(struct lb_state *st, __u32 seed)
{
	__u32 n = READ_ONCE(st->count);

	if (!n || n > MAX_GATEWAYS)
		return 0;
	for (__u32 k = 0; k < FALLBACK_PROBES; k++) {
		__u32 index = (seed + k) % n, slot;

		/* the compiler knows index < n <= MAX_GATEWAYS and would drop the mask the verifier needs */
		asm volatile("" : "+r"(index));
		slot = READ_ONCE(st->live_slots[ITEM(index)]);
		__u16 port = READ_ONCE(st->gw[ITEM(slot)].port);

		if (port && !READ_ONCE(st->gw[ITEM(slot)].down))
			return SCHED_ENTRY(slot, port);
	}
	return 0;
}

/* Takes up the newest publication, keeping this CPU's place: the cursor moves to the same
 * phase of the new schedule. A CPU's first schedule starts at its own offset (golden-ratio
 * spread), so CPUs are never in step. */
static __noinline void adopt_schedule(struct cpu_data *cpu, __u32 published, __u32 len)
{
	if (cpu->len)
		cpu->cursor = len ? (__u32)(((__u64)cpu->cursor * len) / cpu->len) : 0;
	else
		cpu->cursor = len ? ((bpf_get_smp_processor_id() * 0x9E3779B9u) >> 20) % len : 0;
	cpu->published = published;
	cpu->len = len;
}

/* The entry's gateway is still in the table, on that port, and not marked down. */
static __always_inline int entry_is_live(struct lb_state *st, __u32 entry)
{
	struct gateway *g = &st->gw[ITEM(ENTRY_SLOT(entry))];

	return ENTRY_PORT(entry) && READ_ONCE(g->port) == ENTRY_PORT(entry) && !READ_ONCE(g->down);
}

/* The next gateway for this CPU, as SCHED_ENTRY(slot, port); 0 when none is live.
 * The entry is read once, as one value, and checked against the live table unless the
 * caller saw no build pending (current): every change of the table bumps version, and
 * publish() stores published before sched_version, so the schedule read here was built
 * from the table as it is and all its entries are live. */
static __always_inline __u32 schedule_next(struct lb_state *st, struct cpu_data *cpu, int current)
{
	__u32 published = READ_ONCE(st->published), key = published & (SCHED_BUFFERS - 1);
	struct schedule *sched = bpf_map_lookup_elem(&lb_schedules, &key);
	__u32 pos, entry;

	if (!sched)
		return 0;
	if (unlikely(published != cpu->published))
		adopt_schedule(cpu, published, READ_ONCE(sched->len));
	pos = cpu->cursor;
	if (unlikely(pos >= cpu->len))
		return live_fallback(st, pos);
	cpu->cursor = pos + 1 < cpu->len ? pos + 1 : 0;
	entry = READ_ONCE(sched->entry[POS(pos)]);
	if (likely(current || entry_is_live(st, entry)))
		return entry;
	cpu->global.stale_picks++;
	return live_fallback(st, pos);
}

#endif /* SCHEDULER_BPF_H */
