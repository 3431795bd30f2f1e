"""Timing with BPF_PROG_TEST_RUN: calibrated `repeat`, interleaved rounds, verified runs."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ebpflb.bpf import libbpf

from .micro_checks import Check
from .micro_objects import ReplayHarness

CALIBRATION_REPEAT = 64_000
MAX_REPEAT = 20_000_000


@dataclass
class Stats:
    median: float
    low: float  # first quartile
    high: float  # third quartile
    samples: int

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        if len(values) < 2:
            return cls(values[0], values[0], values[0], len(values))
        quartiles = statistics.quantiles(values, n=4)
        return cls(statistics.median(values), quartiles[0], quartiles[2], len(values))


def paired(case: "Case", other: "Case", combine: Callable[[float, float], float]) -> Stats:
    """Statistics of combine(case, other) over rounds: the two ran next to each other in every
    round, so the pairing cancels the machine's drift between rounds."""
    return Stats.of([combine(a, b) for a, b in zip(case.kernel_ns, other.kernel_ns, strict=True)])


def difference(case: "Case", baseline: "Case") -> Stats:
    return paired(case, baseline, lambda a, b: a - b)


def ratio(case: "Case", other: "Case") -> Stats:
    return paired(case, other, lambda a, b: a / b)


@dataclass
class Case:
    """One program on one frame. With a harness, the harness runs and tail-calls prog_fd."""

    key: str
    prog_fd: int
    frame: bytes
    check: Check
    harness: Optional[ReplayHarness] = None
    repeat_multiple: int = 1  # repeat is always a multiple of this (whole schedule cycles)
    repeat: int = 0
    kernel_ns: list[float] = field(default_factory=list)  # the kernel's duration per repetition
    cpu_ns: list[float] = field(default_factory=list)  # this thread's CPU time per repetition
    datagrams: int = 0  # repetitions run and verified

    def run(self, repeat: int) -> tuple[float, float]:
        """One verified test run; returns (kernel ns, CPU ns) per repetition."""
        if self.harness is not None:
            self.harness.target(self.prog_fd)
        run_fd = self.harness.fd if self.harness is not None else self.prog_fd
        token = self.check.before()
        start = time.thread_time_ns()
        verdict, out, duration = libbpf.test_run(run_fd, self.frame, repeat)
        cpu = time.thread_time_ns() - start
        self.check.after(token, repeat, verdict, out)
        self.datagrams += repeat
        return float(duration), cpu / repeat

    def calibrate(self, round_s: float) -> None:
        repeat = _round_up(CALIBRATION_REPEAT, self.repeat_multiple)
        self.run(repeat)  # warms caches and branch predictors, and is verified like the rest
        _, cpu = self.run(repeat)
        wanted = int(round_s * 1e9 / max(cpu, 0.1))
        self.repeat = min(_round_up(max(wanted, CALIBRATION_REPEAT), self.repeat_multiple), MAX_REPEAT)

    def measure_round(self) -> None:
        kernel, cpu = self.run(self.repeat)
        self.kernel_ns.append(kernel)
        self.cpu_ns.append(cpu)

    @property
    def stats(self) -> Stats:
        return Stats.of(self.kernel_ns)

    @property
    def cpu_stats(self) -> Stats:
        return Stats.of(self.cpu_ns)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def measure_interleaved(cases: list[Case], rounds: int, round_s: float) -> None:
    """Each round runs every case once, starting one case later each time, so that drift
    of the machine (other load, frequency) is shared by all cases rather than biasing one."""
    for case in cases:
        case.calibrate(round_s)
    for r in range(rounds):
        for i in range(len(cases)):
            cases[(r + i) % len(cases)].measure_round()
