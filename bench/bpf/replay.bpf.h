/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What every replay harness shares: the one-slot program array it tail-calls through, which
 * the benchmark points at the program under test (bench/micro_objects.py, ReplayHarness). */
#ifndef REPLAY_BPF_H
#define REPLAY_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} replay_target SEC(".maps");

#endif /* REPLAY_BPF_H */
