/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Maps. The pinned ones hold all live state, so a reload or any CLI command adopts it. */
#ifndef MAPS_BPF_H
#define MAPS_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_state SEC(".maps");

/* Two schedules: packets read the active one while the other is rebuilt. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct schedule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_schedules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_data);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_percpu SEC(".maps");

/* Working memory of the single schedule builder (too large for the stack). */
struct build_scratch {
	__u32 n;			/* live gateways copied below, in slot order */
	__u32 best;			/* the step's winner so far (kept out of the verifier's view) */
	__u64 total;			/* sum of their weights */
	__u64 gcd;
	__u16 slot[MAX_GATEWAYS];
	__u16 port[MAX_GATEWAYS];
	__u32 weight[MAX_GATEWAYS];
	__s64 current[MAX_GATEWAYS];	/* smooth WRR "current weight" of each gateway */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct build_scratch);
} lb_scratch SEC(".maps");

#endif /* MAPS_BPF_H */
