/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Types shared by the XDP object and user space (mirrored in ebpflb/bpf/layout.py).
 * Plain fixed-width fields with explicit padding: the byte layout is the contract. */
#ifndef EBPFLB_H
#define EBPFLB_H

#ifndef MAX_GATEWAYS
#define MAX_GATEWAYS 256	/* power of two: slot indexes are masked with it */
#endif
#ifndef SCHED_SIZE
#define SCHED_SIZE 4096		/* power of two: longest exact cycle of the schedule */
#endif
#define SCHED_BUFFERS 4		/* power of two: schedules are published round robin over these */
#define MAX_WEIGHT 65535
#define REG_PAYLOAD_MIN 4	/* bytes 0-3: weight, u32 big-endian; later bytes reserved */
#ifndef FLOW_TABLE_SIZE
#define FLOW_TABLE_SIZE 65536	/* flows --affinity remembers; the least recently seen goes first */
#endif
/* Version of the pinned layout below, recorded in lb_state by the program that created the
 * pins: user space refuses pins of another version instead of misreading them. Bump it with
 * any change of a pinned struct. */
#define EBPFLB_ABI_VERSION 4

/* Why a registration was refused; each reason has its own counter. */
enum reject_reason {
	REJECT_NOT_LOOPBACK = 0,	/* not from a loopback source on the loopback device */
	REJECT_SHORT_PAYLOAD = 1,	/* fewer than 4 payload bytes */
	REJECT_WEIGHT_RANGE = 2,	/* weight above MAX_WEIGHT */
	REJECT_TABLE_FULL = 3,		/* MAX_GATEWAYS gateways already registered */
	REJECT_MALFORMED = 4,		/* fragmented, bad UDP length, IPv6 without checksum */
	REJECT_UNKNOWN_GATEWAY = 5,	/* control: weight change for a port with no gateway */
	REJECT_BAD_REQUEST = 6,		/* control: unknown operation or port 0 */
	REJECT_NOT_OWNER = 7,		/* the gateway belongs to another source address */
	REJECT_PORT_NOT_ALLOWED = 8,	/* port outside the configured gateway port range */
	NR_REJECT_REASONS = 9,
};

/* Operations of the control program (run by user space with BPF_PROG_TEST_RUN). */
enum ctl_op {
	CTL_REGISTER = 1,	/* a registration datagram received by user space (-u) */
	CTL_SET_WEIGHT = 2,	/* change an existing gateway's weight; 0 removes it */
	CTL_ADD_STATIC = 3,	/* add or update a gateway that never expires */
	CTL_SWEEP = 4,		/* expire stale gateways now and publish the configuration */
	CTL_CLAIM_NETNS = 5,	/* record the network namespace served, unless another one is */
};

struct ctl_args {
	__u32 op;		/* enum ctl_op */
	__u32 weight;
	__u16 port;		/* gateway port, host byte order */
	__u16 family;		/* CTL_REGISTER: 4 or 6 */
	__u32 ifindex;		/* CTL_REGISTER: device the datagram arrived on */
	__u32 addr[4];		/* CTL_REGISTER: source address, network byte order */
	__u32 payload_len;	/* CTL_REGISTER: UDP payload bytes received */
	__u32 pad;
	__u64 netns;		/* CTL_CLAIM_NETNS: inode of the network namespace */
};

struct gateway {
	__u16 port;		/* host byte order; 0 marks a free slot */
	__u8 is_static;		/* added by hand: never expires */
	__u8 down;		/* static: no socket was bound on its port when last checked */
	__u32 weight;
	__u64 last_seen_ns;	/* CLOCK_MONOTONIC_COARSE of the last registration */
	__u32 owner[4];		/* source address that registered it (IPv4 as ::ffff:a.b.c.d,
				 * network byte order); all zero: added by hand, owned by root */
};

/* Configuration the program was loaded with, published for user space. */
struct lb_config {
	__u16 service_port;
	__u16 reg_port;
	__u16 gw_port_min;	/* registrations are accepted for these gateway ports only */
	__u16 gw_port_max;
	__u8 trace;
	__u8 userspace_reg;
	__u8 drop_without_gateway;
	__u8 balance_forwarded;	/* also balance datagrams this host forwards (off: only local ones) */
	__u8 reply_nat;		/* tc egress gives gateways' datagrams the service port as source */
	__u8 check_sockets;	/* a gateway lives while a socket is bound on its port */
	__u8 affinity_key;	/* enum affinity_key */
	__u8 pad;
	__u64 expiry_ns;
	__u64 affinity_ns;	/* 0: per-datagram WRR; else a flow keeps its gateway while seen this recently */
};

enum affinity_key {
	AFFINITY_CLIENT = 0,	/* the client's address and port */
	AFFINITY_GTPU = 1,	/* the TEID of a GTPv1-U G-PDU; the client for anything else */
};

/* A flow of --affinity: the client's address (IPv4 as ::ffff:a.b.c.d) and port, or a TEID. */
struct flow_key {
	__u32 addr[4];
	__u32 teid;
	__u16 port;
	__u8 kind;		/* enum affinity_key of this key: a TEID and a client never collide */
	__u8 pad;
};

struct flow {
	__u32 entry;		/* SCHED_ENTRY of its gateway */
	__u32 pad;
	__u64 seen_ns;		/* CLOCK_MONOTONIC_COARSE, refreshed at most once per jiffy */
};

/* The gateway table and the scheduler's shared state: one element, pinned. The fields every
 * datagram reads come first; the port index lives in its own map (struct port_index).
 * Writers hold the lock only for O(1) work; scans run lock-free and re-check under it. */
struct lb_state {
	__u32 abi_version;		/* EBPFLB_ABI_VERSION of the object that created the pins; first, always */
	struct bpf_spin_lock lock;	/* guards the gateway table and its indexes, also the port index */
	__u32 version;			/* bumped (fully ordered) after every change of membership or weight */
	__u32 count;			/* live gateways: entries of live_slots */
	__u32 published;		/* gen << 2 | buffer of the newest schedule; 0 before the first */
	__u32 sched_version;		/* table version the newest published schedule was built from */
	__u32 building;			/* 1 while one CPU runs a build step */
	__u32 slots_used;		/* slots below this have been handed out at least once */
	__u32 free_top;			/* entries in free_slots */
	__u32 down_count;		/* static gateways marked down */
	__u32 revive_cursor;		/* next slot the sweep for down gateways looks at */
	__u64 build_jiffies;		/* when the last build started: at most one starts per jiffy */
	__u64 next_expiry_ns;		/* no dynamic gateway expires before this */
	__u64 netns;			/* inode of the network namespace served; 0 until a loader says */
	struct lb_config config;
	struct gateway gw[MAX_GATEWAYS];
	__u16 free_slots[MAX_GATEWAYS];	/* released slots, reused first */
	__u16 live_slots[MAX_GATEWAYS];	/* slots of the live gateways, dense: the fallback picks here */
	__u16 live_index[MAX_GATEWAYS];	/* position of each live slot in live_slots */
};

/* Which slot holds each port: read only by registrations, so out of the datagrams' way. */
struct port_index {
	__u16 slot_of_port[65536];	/* slot + 1 of the gateway on each port, 0 if none */
};

/* A schedule entry is one 32-bit value, written and read whole: slot << 16 | port. */
#define SCHED_ENTRY(slot, port)	((__u32)(slot) << 16 | (__u16)(port))
#define ENTRY_SLOT(e)		((e) >> 16)
#define ENTRY_PORT(e)		((e) & 0xffff)

/* Whole cycles of the smooth weighted round-robin order, repeated to fill at least half of
 * the buffer (so a cursor keeps its phase when the length changes), or, for a cycle longer
 * than SCHED_SIZE, its first SCHED_SIZE picks. */
struct schedule {
	__u32 len;		/* entries in use */
	__u32 cycle;		/* length of one exact cycle (len when the cycle was cut) */
	__u32 gen;		/* publication number */
	__u32 version;		/* table version it was built from */
	__u32 entry[SCHED_SIZE];
};

struct global_counters {
	__u64 service;			/* service datagrams sent to a gateway */
	__u64 no_gateway_passed;	/* service datagrams passed unchanged: no live gateway */
	__u64 no_gateway_dropped;	/* same, dropped because drop_without_gateway is set */
	__u64 unbalanced;		/* service datagrams passed unchanged: IPv6 without UDP checksum */
	__u64 reg_accepted;
	__u64 reg_rejected[NR_REJECT_REASONS];
	__u64 expired;
	__u64 rebuilds;			/* schedules published */
	__u64 stale_picks;		/* service datagrams whose schedule entry had left: sent by the live list */
	__u64 forwarded;		/* service-port datagrams not for this host, passed unchanged */
	__u64 reg_in_kernel;		/* -u, but no process listened: registrations taken by the kernel */
	__u64 replies_nat;		/* datagrams from a gateway's port given the service port (tc egress) */
	__u64 found_dead;		/* gateways whose socket was gone: removed, or marked down if static */
	__u64 flows_created;		/* --affinity: new flows (beyond FLOW_TABLE_SIZE each evicts the least recent) */
	__u64 flows_expired;		/* flows not seen for the affinity time: chosen anew */
	__u64 flows_moved;		/* flows whose gateway left or died: moved to a live one */
	__u64 departed_packets;		/* counters of gateways whose slot was reused: totals never go back */
	__u64 departed_bytes;
};

struct gateway_counters {
	__u64 packets;
	__u64 bytes;			/* UDP length (header and payload) of each datagram */
	__u64 checked_jiffies;		/* when this CPU last looked for the gateway's socket */
};

/* The last destination this CPU asked the FIB about (see locality.bpf.h). */
struct locality_cache {
	__u32 addr[4];		/* IPv4 as ::ffff:a.b.c.d */
	__u64 jiffies;		/* when asked; the answer holds until the next jiffy */
	__u32 local;		/* 1: an address of this host */
	__u32 pad;
};

/* Per-CPU element: the scheduler cursor and every counter this CPU updates. */
struct cpu_data {
	__u32 cursor;			/* next position in the schedule; kept across publications */
	__u32 published;		/* lb_state.published the cursor belongs to */
	__u32 len;			/* length of that schedule */
	__u32 flow_tick;		/* now_ns in flow cache ticks (maps.bpf.h), at that jiffy */
	__u64 jiffies;			/* when this CPU last compared the clock with the expiry deadline */
	__u64 now_ns;			/* CLOCK_MONOTONIC_COARSE read at that jiffy */
	struct locality_cache locality;
	struct global_counters global;
	struct gateway_counters gw[MAX_GATEWAYS];
};

#endif /* EBPFLB_H */
