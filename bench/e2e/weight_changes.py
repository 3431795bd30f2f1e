"""Weight changes while traffic flows: a thread on the gateways' CPU gives one gateway after
another a new weight every interval (w and w + 1 in turn), so every change needs a new
schedule. Two ways, as a deployment makes them:
- VIA_REGISTRATION: the gateway's heartbeat with its new weight, a registration datagram from
  127.0.0.1 arriving on lo, run through ebpflb's XDP program (BPF_PROG_TEST_RUN with ingress
  ifindex 1, which is what the kernel does with such a datagram on lo). The default, in-kernel
  registration path: the new schedule is built on the packet path, at most one build per jiffy.
- VIA_CONTROL: ebpflb's control program, as `ebpflb weights set` does: every change is built in
  full before the call returns."""
from __future__ import annotations

import os
import threading
import time

from bench.micro_packets import registration_frame
from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlArgs, CtlOp
from ebpflb.dataplane.control import control_fd

INTERVAL_S = 0.001
VIA_REGISTRATION = "registration"
VIA_CONTROL = "control"
XDP_DROP = 1  # a registration handled in the kernel is consumed
LO_IFINDEX = 1


class WeightChanger:
    def __init__(self, pin_path: str, ports: list[int], weights: list[int], cpu: int, via: str,
                 xdp_fd: int = -1, reg_port: int = 0, interval_s: float = INTERVAL_S) -> None:
        self.pin_path = pin_path
        self.via = via
        self.xdp_fd = xdp_fd  # VIA_REGISTRATION: the program registrations go through
        self.reg_port = reg_port
        self.ports = ports
        self.weights = weights
        self.cpu = cpu
        self.interval_s = interval_s
        self.changes = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.changes = self.refused = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="weight-changes")
        self._thread.start()

    def stop(self) -> int:
        """Stops, puts every weight back as it was, returns the changes made."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        return self.changes

    def _run(self) -> None:
        os.sched_setaffinity(0, {self.cpu})
        with control_fd(self.pin_path) as fd:
            raised = [False] * len(self.ports)
            due = time.perf_counter()
            index = 0
            while not self._stop.is_set():
                slot = index % len(self.ports)
                raised[slot] = not raised[slot]
                self._set(fd, self.ports[slot], self.weights[slot] + raised[slot])
                index += 1
                due += self.interval_s
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            for slot, was_raised in enumerate(raised):
                if was_raised:
                    libbpf.run_syscall(fd, CtlArgs(op=CtlOp.SET_WEIGHT, port=self.ports[slot],
                                                   weight=self.weights[slot]))

    def _set(self, fd: int, port: int, weight: int) -> None:
        if self.via == VIA_REGISTRATION:
            frame = registration_frame(port, self.reg_port, weight)
            ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=LO_IFINDEX)
            # consumed (XDP_DROP) also when refused: the run's registration counters tell those apart
            accepted = libbpf.test_run(self.xdp_fd, frame, ctx=ctx)[0] == XDP_DROP
        else:
            accepted = libbpf.run_syscall(fd, CtlArgs(op=CtlOp.SET_WEIGHT, port=port, weight=weight)) >= 0
        if not accepted:
            self.refused += 1
        else:
            self.changes += 1
