"""Reading the pinned state: the gateway table and the per-CPU counters, summed."""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import ABI_VERSION, MAX_GATEWAYS, CpuData, GatewayCounters, GlobalCounters, LbState
from ebpflb.dataplane.pins import map_fd
from ebpflb.errors import IncompatiblePins


@dataclass
class GatewayInfo:
    slot: int
    port: int
    weight: int
    is_static: bool
    age_s: float
    packets: int
    bytes: int
    up: bool = True  # a socket was bound on its port when the packet path last looked


@dataclass
class Snapshot:
    """Everything `status` and `gateways` show, read at one moment."""

    state: LbState
    counters: GlobalCounters
    gateways: list[GatewayInfo]
    # gateways no longer listed: their datagrams and bytes, so that totals never go back
    departed_packets: int = 0
    departed_bytes: int = 0


def read_state(pin_path: str) -> LbState:
    """The pinned state, after checking that this version of ebpflb made it."""
    state = LbState()
    fd = map_fd(pin_path, "lb_state")
    try:
        size = libbpf.map_value_size(fd)
        if size != ctypes.sizeof(LbState):  # another layout: reading it would misread or overrun
            raise _incompatible(pin_path, f"a state of {size} bytes, this version reads {ctypes.sizeof(LbState)}")
        libbpf.map_lookup(fd, 0, state)
    finally:
        os.close(fd)
    if state.abi_version not in (0, ABI_VERSION):  # 0: just created, not yet stamped by the program
        raise _incompatible(pin_path, f"pinned layout version {state.abi_version}, this version reads {ABI_VERSION}")
    return state


def _incompatible(pin_path: str, what: str) -> IncompatiblePins:
    return IncompatiblePins(
        f"the pins in {pin_path} were made by another version of ebpflb ({what}): "
        f"run `ebpflb unload --pin-path {pin_path}` (it only removes them), then load again"
    )


def read_counters(pin_path: str) -> tuple[GlobalCounters, list[GatewayCounters]]:
    """Sums the per-CPU counters: the global ones and each slot's."""
    ncpu = libbpf.num_possible_cpus()
    stride = (ctypes.sizeof(CpuData) + 7) & ~7
    buf = (ctypes.c_char * (stride * ncpu))()
    fd = map_fd(pin_path, "lb_percpu")
    try:
        libbpf.map_lookup(fd, 0, buf)
    finally:
        os.close(fd)
    total = GlobalCounters()
    slots = [GatewayCounters() for _ in range(MAX_GATEWAYS)]
    for cpu in range(ncpu):
        data = CpuData.from_buffer(buf, cpu * stride)
        for name, *_ in GlobalCounters._fields_:
            mine = getattr(data.global_, name)
            if name == "reg_rejected":
                for i in range(len(mine)):
                    total.reg_rejected[i] += mine[i]
            else:
                setattr(total, name, getattr(total, name) + mine)
        for slot in range(MAX_GATEWAYS):
            slots[slot].packets += data.gw[slot].packets
            slots[slot].bytes += data.gw[slot].bytes
    return total, slots


def read_snapshot(pin_path: str) -> Snapshot:
    state = read_state(pin_path)
    global_counters, per_slot = read_counters(pin_path)
    now = time.monotonic_ns()
    gateways = [
        GatewayInfo(
            slot=slot,
            port=g.port,
            weight=g.weight,
            is_static=bool(g.is_static),
            age_s=max(0.0, (now - g.last_seen_ns) / 1e9),
            packets=per_slot[slot].packets,
            bytes=per_slot[slot].bytes,
            up=not g.down,
        )
        for slot, g in enumerate(state.gw)
        if g.port
    ]
    # a departed gateway's counters stay in its slot until the slot is reused; the kernel then
    # moves them to the departed totals
    unlisted = [per_slot[slot] for slot, g in enumerate(state.gw) if not g.port]
    return Snapshot(
        state,
        global_counters,
        gateways,
        departed_packets=global_counters.departed_packets + sum(c.packets for c in unlisted),
        departed_bytes=global_counters.departed_bytes + sum(c.bytes for c in unlisted),
    )
