"""The shipped XDP object loaded into a test's own pin directory, driven by BPF_PROG_TEST_RUN.

No interface is attached: packets go straight to the program through test_run, which makes
them arrive on lo of the calling thread's network namespace unless an `XdpMd` names a device.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import (
    SCHED_BUFFERS,
    CpuData,
    CtlOp,
    GlobalCounters,
    LbConfig,
    LbState,
    PortIndex,
    RejectReason,
    Schedule,
)
from ebpflb.bpf.libbpf import XdpMd
from ebpflb.bpf.object_file import CONFIG_SECTION, CONTROL_PROGRAM, XDP_PROGRAM, object_path
from ebpflb.dataplane import Instance
from ebpflb.dataplane.control import control_fd
from ebpflb.dataplane.userspace_registrations import Registration, apply

from .netns import NetNS

XDP_DROP = 1
XDP_PASS = 2



def default_config(**overrides: int) -> LbConfig:
    """The object's compiled-in defaults (service 2152, registration 3000, expiry 30 s)."""
    config = LbConfig(service_port=2152, reg_port=3000, gw_port_min=1024, gw_port_max=65535, expiry_ns=30 * 10**9)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def counter_values(counters: GlobalCounters) -> dict[str, int]:
    """Flat view of the global counters; each rejection reason is `rejected_<REASON>`."""
    values: dict[str, int] = {}
    for name, *_ in GlobalCounters._fields_:
        if name == "reg_rejected":
            for reason in RejectReason:
                values[f"rejected_{reason.name}"] = int(counters.reg_rejected[reason])
        else:
            values[name] = int(getattr(counters, name))
    return values


@dataclass
class Dataplane:
    """A loaded object: its XDP program fd and the `Instance` over its pins."""

    obj: libbpf.BpfObject
    prog_fd: int
    instance: Instance
    config: LbConfig

    def run(self, packet: bytes, ingress_ifindex: int = 0) -> tuple[int, bytes]:
        """One packet through the XDP program; returns (verdict, packet out)."""
        ctx: Optional[XdpMd] = None
        if ingress_ifindex:
            # the kernel resolves ingress_ifindex in the caller's network namespace
            ctx = XdpMd(data=0, data_end=len(packet), ingress_ifindex=ingress_ifindex)
        verdict, out, _ = libbpf.test_run(self.prog_fd, packet, ctx=ctx)
        return verdict, out

    def reset(self) -> None:
        """Zeroes every pinned map: the state of a freshly loaded object (maps are created
        zeroed and nothing writes them at load), so one load can serve many cases."""
        per_cpu = (ctypes.sizeof(CpuData) + 7) & ~7
        zeroed: list[tuple[str, int, ctypes.Array | ctypes.Structure]] = [
            ("lb_state", 0, LbState()),
            ("lb_port_index", 0, PortIndex()),
            *(("lb_schedules", key, Schedule()) for key in range(SCHED_BUFFERS)),
            ("lb_scratch", 0, (ctypes.c_char * self.obj.value_size("lb_scratch"))()),
            ("lb_percpu", 0, (ctypes.c_char * (per_cpu * libbpf.num_possible_cpus()))()),
        ]
        for name, key, value in zeroed:
            self.write_map(name, key, value)

    def write_map(self, name: str, key: int, value: ctypes.Array | ctypes.Structure) -> None:
        """Overwrites one element of a map of the loaded object (the kernel keeps a value's
        bpf_spin_lock out of the copy)."""
        k = ctypes.c_uint32(key)
        ret = libbpf.lib().bpf_map_update_elem(self.obj.map_fd(name), ctypes.byref(k), ctypes.byref(value), 0)
        libbpf.check(ret, f"update {name}")

    def counters(self) -> dict[str, int]:
        return counter_values(self.instance.snapshot(sweep=False).counters)

    def state(self) -> LbState:
        return self.instance.snapshot(sweep=False).state

    def gateways(self) -> dict[int, tuple[int, int]]:
        """port -> (slot, weight) of every live gateway."""
        return {g.port: (g.slot, g.weight) for g in self.instance.snapshot(sweep=False).gateways}


@contextlib.contextmanager
def loaded(pin_path: str, config: Optional[LbConfig] = None) -> Iterator[Dataplane]:
    """Loads the shipped object with its maps pinned under pin_path; closes it after.

    The control program is pinned too, so `Instance.control` runs the loaded one (with this
    configuration) instead of loading the object again. The pins themselves are removed by
    the `pin_path` fixture."""
    config = config or default_config()
    os.makedirs(pin_path, exist_ok=True)
    obj = libbpf.BpfObject(str(object_path()), pin_root=pin_path)
    try:
        ctypes.memmove(obj.section(CONFIG_SECTION), ctypes.addressof(config), ctypes.sizeof(config))
        obj.load()
        instance = Instance(pin_path)
        obj.pin_program(CONTROL_PROGRAM, instance.pin(CONTROL_PROGRAM))
        yield Dataplane(obj, obj.program_fd(XDP_PROGRAM), instance, config)
    finally:
        obj.close()


@contextlib.contextmanager
def shared(bpffs: str, config: Optional[LbConfig] = None) -> Iterator[Dataplane]:
    """One load in its own namespace and pin directory for a whole module; tests call
    `reset()` first. Everything is removed after, also on failure."""
    pin_path = f"{bpffs}/ebpflb-test-{uuid.uuid4().hex[:12]}"
    namespace = NetNS("pk")
    try:
        with namespace.entered(), loaded(pin_path, config) as plane:
            yield plane
    finally:
        namespace.delete()
        if os.path.exists(pin_path):
            try:
                Instance(pin_path).unload()
            except Exception:
                subprocess.run(["rm", "-rf", pin_path], check=False)


@contextlib.contextmanager
def on_one_cpu(cpu: Optional[int] = None) -> Iterator[int]:
    """Pins this thread to one CPU, so every datagram steps the same per-CPU cursor."""
    before = os.sched_getaffinity(0)
    chosen = min(before) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)


def add_static_owned_by_loopback(instance: Instance, port: int, weight: int) -> None:
    """A gateway registered from 127.0.0.1 (its owner) and then made static: it never expires,
    and registration datagrams from 127.0.0.1 may still re-weight or remove it."""
    with control_fd(instance.pin_path) as fd:  # as `run -u` hands a received registration on
        assert apply(fd, Registration(4, "127.0.0.1", port, 1, struct.pack("!I", weight))) is None
    instance.control(CtlOp.ADD_STATIC, port=port, weight=weight)

