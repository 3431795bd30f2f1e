"""ctypes mirror of kernel/ebpflb.h, the byte contract between the object and user space.

tests/test_layout.py checks every struct here against the object's BTF.
"""

from __future__ import annotations

import ctypes
import enum

MAX_GATEWAYS = 256
SCHED_SIZE = 4096
FLOW_TABLE_SIZE = 65536  # flows --affinity remembers (an LRU hash)
SCHED_BUFFERS = 4
MAX_WEIGHT = 65535
REG_PAYLOAD_MIN = 4
ABI_VERSION = 4  # EBPFLB_ABI_VERSION: the pinned layout's version


class RejectReason(enum.IntEnum):
    NOT_LOOPBACK = 0
    SHORT_PAYLOAD = 1
    WEIGHT_RANGE = 2
    TABLE_FULL = 3
    MALFORMED = 4
    UNKNOWN_GATEWAY = 5
    BAD_REQUEST = 6
    NOT_OWNER = 7
    PORT_NOT_ALLOWED = 8


NR_REJECT_REASONS = len(RejectReason)


class CtlOp(enum.IntEnum):
    REGISTER = 1
    SET_WEIGHT = 2
    ADD_STATIC = 3
    SWEEP = 4
    CLAIM_NETNS = 5


u8, u16, u32, u64, s64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64


class CtlArgs(ctypes.Structure):
    _fields_ = [
        ("op", u32),
        ("weight", u32),
        ("port", u16),
        ("family", u16),
        ("ifindex", u32),
        ("addr", u32 * 4),
        ("payload_len", u32),
        ("pad", u32),
        ("netns", u64),
    ]


class Gateway(ctypes.Structure):
    _fields_ = [
        ("port", u16),
        ("is_static", u8),
        ("down", u8),
        ("weight", u32),
        ("last_seen_ns", u64),
        ("owner", u32 * 4),
    ]


class LbConfig(ctypes.Structure):
    _fields_ = [
        ("service_port", u16),
        ("reg_port", u16),
        ("gw_port_min", u16),
        ("gw_port_max", u16),
        ("trace", u8),
        ("userspace_reg", u8),
        ("drop_without_gateway", u8),
        ("balance_forwarded", u8),
        ("reply_nat", u8),
        ("check_sockets", u8),
        ("affinity_key", u8),
        ("pad", u8),
        ("expiry_ns", u64),
        ("affinity_ns", u64),
    ]


class LbState(ctypes.Structure):
    _fields_ = [
        ("abi_version", u32),
        ("lock", u32),
        ("version", u32),
        ("count", u32),
        ("published", u32),
        ("sched_version", u32),
        ("building", u32),
        ("slots_used", u32),
        ("free_top", u32),
        ("down_count", u32),
        ("revive_cursor", u32),
        ("build_jiffies", u64),
        ("next_expiry_ns", u64),
        ("netns", u64),
        ("config", LbConfig),
        ("gw", Gateway * MAX_GATEWAYS),
        ("free_slots", u16 * MAX_GATEWAYS),
        ("live_slots", u16 * MAX_GATEWAYS),
        ("live_index", u16 * MAX_GATEWAYS),
    ]


class PortIndex(ctypes.Structure):
    _fields_ = [
        ("slot_of_port", u16 * 65536),
    ]


def entry_slot(entry: int) -> int:
    """Slot of a schedule entry (SCHED_ENTRY in kernel/ebpflb.h: slot << 16 | port)."""
    return entry >> 16


def entry_port(entry: int) -> int:
    return entry & 0xFFFF


class Schedule(ctypes.Structure):
    _fields_ = [
        ("len", u32),
        ("cycle", u32),
        ("gen", u32),
        ("version", u32),
        ("entry", u32 * SCHED_SIZE),
    ]


class GlobalCounters(ctypes.Structure):
    _fields_ = [
        ("service", u64),
        ("no_gateway_passed", u64),
        ("no_gateway_dropped", u64),
        ("unbalanced", u64),
        ("reg_accepted", u64),
        ("reg_rejected", u64 * NR_REJECT_REASONS),
        ("expired", u64),
        ("rebuilds", u64),
        ("stale_picks", u64),
        ("forwarded", u64),
        ("reg_in_kernel", u64),
        ("replies_nat", u64),
        ("found_dead", u64),
        ("flows_created", u64),
        ("flows_expired", u64),
        ("flows_moved", u64),
        ("departed_packets", u64),
        ("departed_bytes", u64),
    ]


class GatewayCounters(ctypes.Structure):
    _fields_ = [
        ("packets", u64),
        ("bytes", u64),
        ("checked_jiffies", u64),
    ]


class LocalityCache(ctypes.Structure):
    _fields_ = [
        ("addr", u32 * 4),
        ("jiffies", u64),
        ("local", u32),
        ("pad", u32),
    ]


class CpuData(ctypes.Structure):
    _fields_ = [
        ("cursor", u32),
        ("published", u32),
        ("len", u32),
        ("flow_tick", u32),
        ("jiffies", u64),
        ("now_ns", u64),
        ("locality", LocalityCache),
        ("global_", GlobalCounters),
        ("gw", GatewayCounters * MAX_GATEWAYS),
    ]


# Structs checked against the object's BTF, by their C names.
class FlowKey(ctypes.Structure):
    _fields_ = [
        ("addr", u32 * 4),
        ("teid", u32),
        ("port", u16),
        ("kind", u8),
        ("pad", u8),
    ]


class Flow(ctypes.Structure):
    _fields_ = [
        ("entry", u32),
        ("pad", u32),
        ("seen_ns", u64),
    ]


BTF_MIRRORS: dict[str, type[ctypes.Structure]] = {
    "ctl_args": CtlArgs,
    "gateway": Gateway,
    "lb_config": LbConfig,
    "lb_state": LbState,
    "port_index": PortIndex,
    "schedule": Schedule,
    "global_counters": GlobalCounters,
    "gateway_counters": GatewayCounters,
    "locality_cache": LocalityCache,
    "cpu_data": CpuData,
    "flow_key": FlowKey,
    "flow": Flow,
}
