"""Weight changes while traffic flows: a thread on the gateways' CPU gives one gateway after
another a new weight every interval (w and w + 1 in turn), each through ebpflb's control
program as `ebpflb weights set` does, so every change needs a new schedule."""
from __future__ import annotations

import os
import threading
import time

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlArgs, CtlOp
from ebpflb.dataplane.control import control_fd

INTERVAL_S = 0.001


class WeightChanger:
    def __init__(self, pin_path: str, ports: list[int], weights: list[int], cpu: int,
                 interval_s: float = INTERVAL_S) -> None:
        self.pin_path = pin_path
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
        if libbpf.run_syscall(fd, CtlArgs(op=CtlOp.SET_WEIGHT, port=port, weight=weight)) < 0:
            self.refused += 1
        else:
            self.changes += 1
