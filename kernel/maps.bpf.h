/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Maps. The pinned ones hold all live state, so a reload or any CLI command adopts it. */
#ifndef MAPS_BPF_H
#define MAPS_BPF_H

/* Loads and stores the compiler must emit once, whole, where written (shared with other CPUs). */
#define READ_ONCE(x)		(*(const volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v)	(*(volatile typeof(x) *)&(x) = (v))
/* A branch the packet path rarely takes: the compiler lays the common case out straight. */
#define unlikely(x)		__builtin_expect(!!(x), 0)
#define likely(x)		__builtin_expect(!!(x), 1)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_state SEC(".maps");

/* Which slot holds each port (see struct port_index). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_index);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_port_index SEC(".maps");

/* Schedules, published round robin: a new one is written into a buffer that was last
 * published several jiffies ago, never into the one packets read. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SCHED_BUFFERS);
	__type(key, __u32);
	__type(value, struct schedule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_schedules SEC(".maps");

/* --affinity: each flow's gateway. LRU: a full table drops the flow seen least recently. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOW_TABLE_SIZE);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_flows SEC(".maps");

#define FLOW_CACHE_BLOCK 1024	/* power of two: entries of one block (32 KiB, the largest per-CPU value) */
#define FLOW_CACHE_BLOCKS 8	/* power of two: blocks per CPU, so 8192 flows per CPU */
#define FLOW_CACHE_BITS 13	/* log2(FLOW_CACHE_BLOCKS * FLOW_CACHE_BLOCK): bits of a flow's hash */
#define FLOW_CACHE_TICK_SHIFT 20	/* cache ages count 2^20 ns (about 1 ms) ticks */
#define FLOW_CACHE_TICKS 64	/* longest a cached flow is used without asking lb_flows (67 ms) */

/* A flow's gateway as this CPU last found it in lb_flows, and until when it may be used. */
struct flow_cache_entry {
	struct flow_key key;
	__u32 entry;
	__u32 until;		/* cpu_data.flow_tick from which it is stale (compared mod 2^32) */
};

struct flow_cache_block {
	struct flow_cache_entry slot[FLOW_CACHE_BLOCK];
};

/* Direct-mapped, per CPU, not pinned: a steady flow looks up lb_flows (which refreshes its seen
 * time) once per FLOW_CACHE_TICKS or 1/16 of the affinity time, whichever is shorter, and in
 * between costs a hash and two compares. The stale tick is kept rather than the fill time, so
 * a hit only compares it with the CPU's tick of this jiffy. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_CACHE_BLOCKS);
	__type(key, __u32);
	__type(value, struct flow_cache_block);
} lb_flow_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_data);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_percpu SEC(".maps");

enum build_phase {
	BUILD_IDLE = 0,
	BUILD_SNAPSHOT,		/* copy the live gateways and size the cycle */
	BUILD_START,		/* give every gateway its first deadline */
	BUILD_FILL,		/* earliest-deadline-first, one schedule position at a time */
	BUILD_REPEAT,		/* copy the cycle until the schedule is full */
};

#define DEADLINE_WORDS (SCHED_SIZE / 64)

/* One live gateway while a schedule is built. */
struct build_item {
	__u32 entry;		/* SCHED_ENTRY(slot, port) */
	__u32 weight;		/* picks per cycle */
	__u32 picks;		/* picks so far */
	__u32 step_q;		/* span / weight, quotient and remainder */
	__u32 step_r;
	__u32 due_q;		/* (picks + 1) * span / weight, quotient and remainder: the next deadline */
	__u32 due_r;
	__u32 next;		/* item + 1 after this one on its deadline or release list, 0 at the end */
};

/* Working memory of the single schedule builder (too large for the stack). It survives
 * between build steps: a build is spread over several datagrams. */
struct build_scratch {
	__u32 phase;			/* enum build_phase */
	__u32 version;			/* table version being built */
	__u32 n;			/* live gateways copied below, in slot order */
	__u32 total;			/* sum of their weights */
	__u32 gcd;
	__u32 cycle;			/* positions the deadline scheduler fills */
	__u32 span;			/* T: the cycle's length in weight units (see scheduler.bpf.h) */
	__u32 len;			/* entries of the finished schedule */
	__u32 pos;			/* next position to fill or copy */
	__u32 buffer;			/* schedule buffer being written */
	__u32 late_head;		/* item + 1 due after the last position, 0 if none */
	__u32 deadline_earliest;	/* earliest deadline queued, while deadline_summary is not 0 */
	__u64 deadline_summary;		/* bit w: deadline_bits[w] is not empty */
	__u64 deadline_bits[DEADLINE_WORDS];	/* bit d: some gateway's next pick is due by d */
	__u16 deadline_head[SCHED_SIZE];	/* item + 1 first due by that position, 0 if none */
	__u16 release_head[SCHED_SIZE];		/* item + 1 whose next pick may start there */
	struct build_item item[MAX_GATEWAYS];	/* the live gateways, in slot order */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct build_scratch);
} lb_scratch SEC(".maps");

static __always_inline struct lb_state *shared_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_state, &zero);
}

static __always_inline struct port_index *port_index(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_port_index, &zero);
}

static __always_inline struct cpu_data *this_cpu_data(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_percpu, &zero);
}

/* The cache slot for a flow hash, in this CPU's block. */
static __always_inline struct flow_cache_entry *flow_cache_slot(__u32 hash)
{
	__u32 block = (hash / FLOW_CACHE_BLOCK) & (FLOW_CACHE_BLOCKS - 1);
	struct flow_cache_block *b = bpf_map_lookup_elem(&lb_flow_cache, &block);

	return b ? &b->slot[hash & (FLOW_CACHE_BLOCK - 1)] : 0;
}

static __always_inline struct build_scratch *build_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_scratch, &zero);
}

#endif /* MAPS_BPF_H */
