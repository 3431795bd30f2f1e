"""ebpflb under test: the shipped object loaded with ebpflb's own loader over a pin directory
of this run only. Nothing is attached to any interface: BPF_PROG_TEST_RUN needs no attachment.
Leaving the context removes every pin it made, also on Ctrl-C."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import uuid
from dataclasses import dataclass
from typing import Iterator, Sequence

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import MAX_GATEWAYS, SCHED_BUFFERS, CtlOp, GlobalCounters, LbState, Schedule
from ebpflb.bpf.object_file import CONFIG_SECTION, CONTROL_PROGRAM, XDP_PROGRAM, object_path
from ebpflb.dataplane import Instance, config_for
from ebpflb.dataplane.control import control_fd
from ebpflb.dataplane.host import require_bpffs
from ebpflb.dataplane.userspace_registrations import Registration, apply

BPFFS = "/sys/fs/bpf"
# gateways registered here are static, and the clock check finds nothing to expire for a year
EXPIRY_S = 365 * 86400


@dataclass
class Counters:
    """Everything a check compares before and after a run, summed over CPUs."""

    global_: GlobalCounters
    packets: dict[int, int]  # per slot of a live gateway
    state: LbState


class EbpflbUnderTest:
    def __init__(
        self,
        service_port: int,
        reg_port: int,
        affinity_s: float = 0.0,
        pin_path: str | None = None,
        reply_nat: bool = True,
    ) -> None:
        self.service_port = service_port
        self.reg_port = reg_port
        self.affinity_s = affinity_s
        self.reply_nat = reply_nat
        self.pin_path = pin_path or f"{BPFFS}/ebpflb-microbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.instance = Instance(self.pin_path)
        self.obj: libbpf.BpfObject | None = None
        self.xdp_fd = -1
        # one bound socket per gateway: the packet path checks that a gateway's port has one
        self.sockets: list[socket.socket] = []

    def open(self) -> None:
        require_bpffs(self.pin_path)
        os.mkdir(self.pin_path)
        config = config_for(
            self.service_port,
            self.reg_port,
            EXPIRY_S,
            False,
            False,
            False,
            reply_nat=self.reply_nat,
            affinity_s=self.affinity_s,
        )
        self.obj = libbpf.BpfObject(str(object_path()), pin_root=self.pin_path)
        ctypes.memmove(self.obj.section(CONFIG_SECTION), ctypes.addressof(config), ctypes.sizeof(config))
        self.obj.load()
        self.obj.pin_program(CONTROL_PROGRAM, self.instance.pin(CONTROL_PROGRAM))
        self.xdp_fd = self.obj.program_fd(XDP_PROGRAM)
        self.instance.control(CtlOp.SWEEP)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        if os.path.isdir(self.pin_path):
            self.instance.unload()  # detaches nothing (nothing is attached), removes the pins

    def add_static(self, ports: Sequence[int], weights: Sequence[int]) -> None:
        if len(ports) > MAX_GATEWAYS:
            raise RuntimeError(f"ebpflb holds {MAX_GATEWAYS} gateways, the benchmark asked for {len(ports)}")
        for port, weight in zip(ports, weights):
            self.listen(port)
            self.instance.control(CtlOp.ADD_STATIC, port, weight)

    def listen(self, port: int) -> None:
        """A socket on 127.0.0.1:port, where the benchmark's datagrams go, kept until close:
        without one the packet path would find the gateway dead."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        self.sockets.append(sock)

    def add_static_owned_by_loopback(self, ports: Sequence[int], weights: Sequence[int], listen: bool = True) -> None:
        """Registered from 127.0.0.1, so registration datagrams from there (the benchmark's
        frames) may change them, then made static, so none expires during the run. Without
        `listen` the gateways' sockets are the caller's (elsewhere, e.g. in a namespace)."""
        for port, weight in zip(ports, weights):
            if listen:
                self.listen(port)
            with control_fd(self.instance.pin_path) as fd:  # as `run -u` hands a received registration on
                if apply(fd, Registration(4, "127.0.0.1", port, 1, struct.pack("!I", weight))) is not None:
                    raise RuntimeError(f"the registration of gateway {port} was refused")
            self.instance.control(CtlOp.ADD_STATIC, port, weight)

    def counters(self) -> Counters:
        snap = self.instance.snapshot(sweep=False)  # a pure read: no control operation
        return Counters(snap.counters, {g.slot: g.packets for g in snap.gateways}, snap.state)

    def slot_weights(self, state: LbState) -> dict[int, tuple[int, int]]:
        """{slot: (port, weight)} of the live gateways."""
        return {slot: (g.port, g.weight) for slot, g in enumerate(state.gw) if g.port}

    def active_schedule_length(self) -> int:
        state = self.counters().state
        sched = Schedule()
        fd = libbpf.obj_get(self.instance.pin("lb_schedules"))
        try:
            libbpf.map_lookup(fd, state.published & (SCHED_BUFFERS - 1), sched)
        finally:
            os.close(fd)
        return sched.len


@contextlib.contextmanager
def ebpflb_under_test(service_port: int, reg_port: int, affinity_s: float = 0.0) -> Iterator[EbpflbUnderTest]:
    lb = EbpflbUnderTest(service_port, reg_port, affinity_s)
    try:
        lb.open()
        yield lb
    finally:
        lb.close()
