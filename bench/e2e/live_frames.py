"""The NIC-like injector: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs an XDP program
on frames from a page pool as if a driver had received them on one device, and carries out the
verdict (XDP_PASS frames become skbs passed up the stack). It runs in a thread of its own that
entered the device's namespace (the kernel looks the device up there), pinned to one CPU and,
if allowed, under SCHED_FIFO, so that ksoftirqd does not take over the CPU's softirq work."""
from __future__ import annotations

import ctypes
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

import netns

from ebpflb.bpf import libbpf

# Each call makes and destroys a page pool; the destroy waits ~25 ms while pages sit in socket
# queues, so calls must be long: 2^18 frames take ~0.2 s at 1.2 Mpps.
FRAMES_PER_CALL = 1 << 18
BATCH_SIZE = libbpf.XDP_LIVE_MAX_BATCH
FIFO_PRIORITY = 10
THREAD_NAME = b"nic-inject"  # the comm perf and /proc show for the injecting thread
PR_SET_NAME = 15
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")
# A point whose injecting CPU spent more than this share of the time in ksoftirqd ran in the
# other mode (skbs freed on the other CPU drained in ksoftirqd): reported apart.
KSOFTIRQD_LIMIT = 0.05


@dataclass
class Injection:
    frames: int
    elapsed_s: float
    calls: int
    ksoftirqd_ns: float  # CPU time of ksoftirqd/<cpu> during the injection
    net_rx: int  # NET_RX softirqs raised on the injecting CPU during the injection
    fifo: bool  # the thread ran under SCHED_FIFO


def ksoftirqd_pid(cpu: int) -> int:
    wanted = f"ksoftirqd/{cpu}"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == wanted:
                        return int(entry)
            except OSError:
                continue
    raise RuntimeError(f"no {wanted} thread found")


def task_cpu_ns(pid: int) -> float:
    """utime + stime of a task (a kernel thread's time is all stime)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_NS


def net_rx_softirqs(cpu: int, text: str | None = None) -> int:
    """The NET_RX count of one CPU in /proc/softirqs."""
    if text is None:
        with open("/proc/softirqs") as softirqs:
            text = softirqs.read()
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "NET_RX:":
            return int(fields[1 + cpu])
    raise RuntimeError("no NET_RX line in /proc/softirqs")


def in_ksoftirqd_mode(ksoftirqd_ns: float, elapsed_s: float) -> bool:
    return elapsed_s > 0 and ksoftirqd_ns / (elapsed_s * 1e9) > KSOFTIRQD_LIMIT


class Injector:
    """Feeds frames to one device of one namespace from one CPU."""

    def __init__(self, ns: str, ifname: str, cpu: int, frames_per_call: int = FRAMES_PER_CALL,
                 batch_size: int = BATCH_SIZE) -> None:
        self.ns = ns
        self.ifname = ifname
        self.cpu = cpu
        self.frames_per_call = frames_per_call
        self.batch_size = batch_size
        self.ksoftirqd = ksoftirqd_pid(cpu)

    def inject(self, prog_fd: int, frame: bytes, seconds: float,
               calls: int | None = None) -> Injection:
        """Calls of frames_per_call frames until `seconds` passed (or exactly `calls` calls)."""
        def body() -> Injection:
            return self._inject(prog_fd, frame, seconds, calls)
        return run_pinned(self.ns, body)

    def _inject(self, prog_fd: int, frame: bytes, seconds: float, calls: int | None) -> Injection:
        os.sched_setaffinity(0, {self.cpu})
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
            fifo = True
        except OSError:
            fifo = False
        ifindex = socket.if_nametoindex(self.ifname)  # looked up in this thread's namespace
        done = 0
        ksoft_before, net_rx_before = task_cpu_ns(self.ksoftirqd), net_rx_softirqs(self.cpu)
        start = time.perf_counter()
        deadline = start + seconds
        while (done < calls) if calls is not None else (time.perf_counter() < deadline):
            libbpf.test_run_live_frames(prog_fd, frame, self.frames_per_call, self.batch_size, ifindex)
            done += 1
        elapsed = time.perf_counter() - start
        return Injection(frames=done * self.frames_per_call, elapsed_s=elapsed, calls=done,
                         ksoftirqd_ns=task_cpu_ns(self.ksoftirqd) - ksoft_before,
                         net_rx=net_rx_softirqs(self.cpu) - net_rx_before, fifo=fifo)


def run_pinned(ns: str, fn: Callable[[], Injection]) -> Injection:
    """fn in a fresh thread named THREAD_NAME inside namespace ns (netns.run_in_namespace)."""
    def named() -> Injection:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(THREAD_NAME), 0, 0, 0)
        return fn()
    return netns.run_in_namespace(ns, named)
