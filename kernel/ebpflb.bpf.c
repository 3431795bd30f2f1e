// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* ebpflb: spreads UDP datagrams for the service port over registered local gateways.
 * Entry points: the XDP program (first in the object, so xdp-loader picks it), the tc
 * egress program that gives replies the service port, and a control program that user
 * space runs with BPF_PROG_TEST_RUN. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "ebpflb.h"
#include "config.bpf.h"
#include "maps.bpf.h"
#include "packet/parsing.bpf.h"
#include "packet/csum.bpf.h"
#include "locality.bpf.h"
#include "socket_lookup.bpf.h"
#include "scheduler.bpf.h"
#include "registry.bpf.h"
#include "expiry.bpf.h"
#include "liveness.bpf.h"
#include "affinity.bpf.h"
#include "reply_nat.bpf.h"

/* A registration datagram: consumed here unless user space (-u) handles them and its
 * socket is still there. */
static __always_inline int handle_registration(struct xdp_md *ctx, struct udp_view *v,
					       struct hdr_cursor *c)
{
	struct cpu_data *cpu = this_cpu_data();
	__u16 port = bpf_ntohs(v->udp->source);
	__u32 udp_len, reason;
	__be32 *weight;

	if (lb_config.userspace_reg) {
		if (udp_socket_bound(ctx, v, v->udp->dest))
			return XDP_PASS;
		if (cpu)
			cpu->global.reg_in_kernel++;
	}
	udp_len = bpf_ntohs(v->udp->len);
	weight = c->pos;

	if (ctx->ingress_ifindex != 1 || !is_loopback_source(v))
		reason = REJECT_NOT_LOOPBACK;
	else if (v->fragmented || udp_len < sizeof(struct udphdr) || (v->ipv6 && !v->udp->check))
		reason = REJECT_MALFORMED;
	else if (udp_len < sizeof(struct udphdr) + REG_PAYLOAD_MIN || (void *)(weight + 1) > c->end)
		reason = REJECT_SHORT_PAYLOAD;
	else {
		struct reg_request r = {
			.port = port,
			.flags = REG_FROM_SOURCE,
			.weight = bpf_ntohl(*weight),
			.now = bpf_ktime_get_coarse_ns(),
		};

		packet_addr_16(v, ADDR_SOURCE, r.owner);
		registry_update(&r);
		return XDP_DROP;
	}
	reject(cpu, port, 0, reason);
	return XDP_DROP;
}

/* Once per jiffy and CPU: expiry (the coarse clock ticks no faster) and the sweep for down
 * gateways. */
static __always_inline void once_per_jiffy(struct xdp_md *ctx, const struct udp_view *v,
					   struct lb_state *st, struct cpu_data *cpu)
{
	__u64 now, jiffies = bpf_jiffies64();	/* inlined: a plain load */

	if (likely(jiffies == cpu->jiffies))
		return;
	cpu->jiffies = jiffies;
	now = bpf_ktime_get_coarse_ns();
	cpu->now_ns = now;
	cpu->flow_tick = now >> FLOW_CACHE_TICK_SHIFT;
	if (now >= st->next_expiry_ns)
		expire_gateways(now);
	revive_sweep(ctx, v, st);
}

/* A service datagram: rewrite its destination to the next gateway in the schedule, or to its
 * flow's gateway with --affinity. */
static __always_inline int balance(struct xdp_md *ctx, struct udp_view *v, struct hdr_cursor *c)
{
	struct cpu_data *cpu = this_cpu_data();
	struct lb_state *st = shared_state();
	struct gateway_counters *gc;
	__u32 pick;
	int current;

	if (!cpu || !st)
		return XDP_PASS;
	if (unlikely(!lb_config.balance_forwarded && !to_local_address(ctx, v, cpu))) {
		cpu->global.forwarded++;
		return XDP_PASS;
	}
	if (unlikely(v->ipv6 && !v->udp->check)) {
		/* an IPv6 datagram without checksum is dropped by the stack anyway */
		cpu->global.unbalanced++;
		return XDP_PASS;
	}
	once_per_jiffy(ctx, v, st, cpu);
	current = !schedule_pending(st);
	if (unlikely(!current))
		schedule_build(BUILD_ONE_STEP);

	if (lb_config.affinity_ns) {
		pick = flow_pick(ctx, v, c, st, cpu);
	} else {
		pick = schedule_next(st, cpu, current);
		if (pick)
			pick = pick_alive(ctx, v, st, cpu, pick);
	}
	if (unlikely(!pick)) {
		if (lb_config.drop_without_gateway) {
			cpu->global.no_gateway_dropped++;
			return XDP_DROP;
		}
		cpu->global.no_gateway_passed++;
		return XDP_PASS;
	}

	udp_set_dest(v->udp, bpf_htons(ENTRY_PORT(pick)));
	gc = &cpu->gw[ENTRY_SLOT(pick) & (MAX_GATEWAYS - 1)];
	gc->packets++;
	gc->bytes += bpf_ntohs(v->udp->len);
	cpu->global.service++;
	return XDP_PASS;
}

SEC("xdp")
int ebpflb_xdp(struct xdp_md *ctx)
{
	struct hdr_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct udp_view v;
	__u16 dport;

	if (parse_udp(&c, &v) != PARSE_UDP)
		return XDP_PASS;
	dport = bpf_ntohs(v.udp->dest);
	if (dport == lb_config.service_port)
		return balance(ctx, &v, &c);
	if (dport == lb_config.reg_port)
		return handle_registration(ctx, &v, &c);
	return XDP_PASS;
}

SEC("tc")
int ebpflb_reply_nat(struct __sk_buff *skb)
{
	return reply_nat(skb);
}

/* Control operations from user space. Returns 0 or REJECTED(reason). */
SEC("syscall")
int ebpflb_control(struct ctl_args *args)
{
	struct lb_state *st = shared_state();
	struct reg_request r = {
		.port = args->port,
		.weight = args->weight,
		/* the coarse clock of the packet path is not offered here; both are CLOCK_MONOTONIC */
		.now = bpf_ktime_get_ns(),
	};
	int ret;

	if (!st)
		return REJECTED(REJECT_BAD_REQUEST);
	switch (args->op) {
	case CTL_REGISTER: {
		__u32 addr[4];

		if (args->ifindex != 1 || !is_loopback_addr(args->family == 6, args->addr))
			return reject(this_cpu_data(), args->port, 0, REJECT_NOT_LOOPBACK);
		if (args->payload_len < REG_PAYLOAD_MIN)
			return reject(this_cpu_data(), args->port, 0, REJECT_SHORT_PAYLOAD);
		/* copied first: the verifier allows no pointer arithmetic on the context */
		__builtin_memcpy(addr, args->addr, sizeof(addr));
		r.flags = REG_FROM_SOURCE;
		addr_to_16(args->family == 6, addr, r.owner);
		ret = registry_update(&r);
		break;
	}
	case CTL_SET_WEIGHT:
		r.flags = REG_MUST_EXIST;
		ret = registry_update(&r);
		break;
	case CTL_ADD_STATIC:
		r.flags = REG_MAKE_STATIC;
		ret = registry_update(&r);
		break;
	case CTL_CLAIM_NETNS: {
		__u64 held = __sync_val_compare_and_swap(&st->netns, 0, args->netns);

		return held && held != args->netns ? REJECTED(REJECT_BAD_REQUEST) : 0;
	}
	case CTL_SWEEP:
		publish_config(st);
		expire_gateways(r.now);
		schedule_build(BUILD_COMPLETE);
		return 0;
	default:
		return reject(this_cpu_data(), args->port, args->weight, REJECT_BAD_REQUEST);
	}
	/* not a packet path: the change is in the schedule when the call returns */
	schedule_build(BUILD_COMPLETE);
	return ret;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
