"""Section 3: what a weight change costs, and what the slowest datagram pays for it.

A change arrives as a registration datagram through the XDP program (BPF_PROG_TEST_RUN,
repeat 1, on lo; timed by the kernel). The schedule is then built a bounded step at a time by
the datagrams that follow. Two ways of sending them:
- one by one, each its own repeat-1 run until the new schedule is published: every run is kept,
  so the table gives the slowest run of any datagram (p99 and p100 over all changes). Each run
  is cache-cold (Python runs between them), so their sum, less as many plain datagrams, is what
  a change costs when datagrams arrive far apart;
- in trains of TRAIN datagrams under the replay harness (one test run each, back to back as
  under load) until publication: the trains' time less as many plain trains is what a change
  costs under traffic.
The interrupts taken by the benchmark's CPU are read before and after each repeat-1 run: a run
that shared its time with an interrupt handler is counted, and the p100 is also given without
those runs. After each change one plain ebpflb datagram, and after each build step one run of an
empty XDP_PASS program, are timed alike: the machine's own p99 and p100 for a repeat-1 run, the
floor of what any program can show here (the empty program over as many runs as the steps).
The control program, which builds the whole schedule at once (the CLI's `weights set`), is
timed on the wall clock. Changes alternate one gateway between two weights, so each one
rebuilds."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlOp, LbState
from ebpflb.bpf.libbpf import XdpMd
from ebpflb.scheduler import schedule

from .micro_checks import XDP_DROP, XDP_PASS, expect, expect_verdict
from .micro_ebpflb import EbpflbUnderTest, ebpflb_under_test
from .micro_machine import InterruptCount
from .micro_objects import Replay
from .micro_packets import registration_frame
from .micro_service import FIRST_GATEWAY_PORT, REG_PORT, SERVICE_PORT

LOOPBACK_IFINDEX = 1
MAX_DATAGRAMS_PER_CHANGE = 2000  # a build is about 70 steps; far more means it is stuck
TRAIN = 64  # service datagrams per test run when they come back to back
TRAIN_CHANGES = 200  # changes measured with trains (after the one-by-one ones)


@dataclass(frozen=True)
class WeightCase:
    name: str
    base: int  # weight of every gateway but the last
    alternate: tuple[int, int]  # the last gateway's weights, taken in turn

    def weights(self, count: int, last: int) -> list[int]:
        return [self.base] * (count - 1) + [last]


WEIGHT_CASES = (
    WeightCase("small sum", 1, (1, 2)),  # cycle = N or N + 1, repeated to fill the schedule
    WeightCase("large sum", 1000, (999, 1001)),  # gcd 1, sum > 4096: cut at 4096 picks
)
REBUILD_GATEWAY_COUNTS = (8, 64, 256)


@dataclass
class RebuildResult:
    gateways: int
    case: WeightCase
    lengths: tuple[int, int]  # schedule length with either alternate weight
    changes: int = 0
    registration_ns: list[float] = field(default_factory=list)  # the datagram carrying the change
    building_ns: list[float] = field(default_factory=list)  # service datagrams until publication
    datagrams_per_change: list[int] = field(default_factory=list)
    change_cpu_ns: list[float] = field(default_factory=list)  # total over a change's datagrams, one by one
    train_cpu_ns: list[float] = field(default_factory=list)  # the same with datagrams in trains
    plain_service_ns: float = 0.0
    plain_train_ns: float = 0.0  # one train with nothing to build
    interleaved_plain_ns: list[float] = field(default_factory=list)  # one after each change: the noise floor
    interleaved_pass_ns: list[float] = field(default_factory=list)  # an empty XDP_PASS program after each step
    # the same three kinds of run, only those no interrupt hit
    registration_quiet_ns: list[float] = field(default_factory=list)
    building_quiet_ns: list[float] = field(default_factory=list)
    interleaved_quiet_ns: list[float] = field(default_factory=list)
    interleaved_pass_quiet_ns: list[float] = field(default_factory=list)
    control_change_ns: list[float] = field(default_factory=list)
    rebuilds: int = 0  # counted by the kernel, checked equal to the number of changes

class Runner:
    """Runs datagrams through ebpflb one at a time (timed by the kernel, interrupts counted)
    or in trains under the replay harness, and tells when the pending schedule is published
    (reading lb_state only: a full snapshot would evict more of the cache between runs)."""

    def __init__(self, lb: EbpflbUnderTest, replay: Replay, interrupts: InterruptCount) -> None:
        self.lb = lb
        self.replay = replay
        self.interrupts = interrupts
        self._state = LbState()
        self._state_fd = libbpf.obj_get(lb.instance.pin("lb_state"))
        replay.target(lb.xdp_fd)

    def one(self, frame: bytes, verdict: int, prog_fd: int | None = None) -> tuple[float, bool]:
        """One datagram arriving on lo, through ebpflb or prog_fd: (the kernel's run time in ns,
        whether an interrupt came)."""
        ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=LOOPBACK_IFINDEX)
        before = self.interrupts.read()
        got, _, duration = libbpf.test_run(self.lb.xdp_fd if prog_fd is None else prog_fd, frame, 1, ctx=ctx)
        interrupted = self.interrupts.read() != before
        expect_verdict(got, verdict)
        return float(duration), interrupted

    def train(self, frame: bytes) -> float:
        """TRAIN service datagrams back to back (the harness restores each); their total ns."""
        got, _, per_datagram = libbpf.test_run(self.replay.fd, frame, TRAIN)
        expect_verdict(got, XDP_PASS)
        return float(per_datagram) * TRAIN

    def published(self) -> bool:
        libbpf.map_lookup(self._state_fd, 0, self._state)
        return self._state.sched_version == self._state.version

    def close(self) -> None:
        os.close(self._state_fd)


def keep(run: tuple[float, bool], every: list[float], quiet: list[float]) -> float:
    """Records a timed run in `every`, and in `quiet` if no interrupt came; returns its ns."""
    ns, interrupted = run
    every.append(ns)
    if not interrupted:
        quiet.append(ns)
    return ns


def measure_rebuild(
    count: int,
    case: WeightCase,
    changes: int,
    service: bytes,
    replay: Replay,
    pass_fd: int,
    interrupts: InterruptCount,
) -> RebuildResult:
    """service: the frame the replay harness was made for (it restores that frame's port and checksum);
    pass_fd: an empty XDP_PASS program, timed after each build step as the floor."""
    first, second = case.alternate
    result = RebuildResult(
        count, case, (len(schedule(case.weights(count, first))), len(schedule(case.weights(count, second))))
    )
    with ebpflb_under_test(SERVICE_PORT, REG_PORT) as lb:
        ports = [FIRST_GATEWAY_PORT + i for i in range(count)]
        lb.add_static_owned_by_loopback(ports, case.weights(count, first))
        port = ports[-1]
        frames = {w: registration_frame(port, REG_PORT, w) for w in case.alternate}
        runner = Runner(lb, replay, interrupts)
        try:
            result.plain_service_ns = statistics.median(runner.one(service, XDP_PASS)[0] for _ in range(2000))
            result.plain_train_ns = statistics.median(runner.train(service) for _ in range(500))
            other = {first: second, second: first}
            weight = first
            before = lb.counters().global_
            for _ in range(changes):
                weight = other[weight]
                change = runner.one(frames[weight], XDP_DROP)
                runs = [keep(change, result.registration_ns, result.registration_quiet_ns)]
                while not runner.published():
                    expect(len(runs) < MAX_DATAGRAMS_PER_CHANGE, "a schedule build did not complete")
                    runs.append(keep(runner.one(service, XDP_PASS), result.building_ns, result.building_quiet_ns))
                    # the empty program as often as the build steps, so both p100s are over as many runs
                    empty = runner.one(service, XDP_PASS, pass_fd)
                    keep(empty, result.interleaved_pass_ns, result.interleaved_pass_quiet_ns)
                result.datagrams_per_change.append(len(runs))
                result.change_cpu_ns.append(sum(runs) - len(runs) * result.plain_service_ns)
                # a datagram with nothing to build, in the same (cold) conditions: what p100 means here
                keep(runner.one(service, XDP_PASS), result.interleaved_plain_ns, result.interleaved_quiet_ns)
            for _ in range(TRAIN_CHANGES):
                weight = other[weight]
                cpu = runner.one(frames[weight], XDP_DROP)[0] - result.plain_service_ns
                trains = 0
                while not runner.published():
                    expect(trains * TRAIN < MAX_DATAGRAMS_PER_CHANGE, "a schedule build did not complete")
                    cpu += runner.train(service) - result.plain_train_ns
                    trains += 1
                result.train_cpu_ns.append(cpu)
        finally:
            runner.close()
        result.changes = changes + TRAIN_CHANGES
        after = lb.counters()
        result.rebuilds = after.global_.rebuilds - before.rebuilds
        expect(
            result.rebuilds == result.changes,
            f"{result.rebuilds} schedules published for {result.changes} weight changes",
        )
        for _ in range(min(changes, 200)):
            weight = other[weight]
            start = time.perf_counter_ns()
            lb.instance.control(CtlOp.SET_WEIGHT, port, weight)
            result.control_change_ns.append(float(time.perf_counter_ns() - start))
        final = [w for _, w in sorted(lb.slot_weights(lb.counters().state).values())]
        expect(final == case.weights(count, weight), "the gateway table does not hold the weights set")
        length = lb.active_schedule_length()
        expect(length == len(schedule(final)), f"schedule of {length} picks, expected {len(schedule(final))}")
    return result


def run_rebuild_benchmarks(
    changes: int, service: bytes, replay: Replay, pass_fd: int, cpu: int, progress: Callable[[str], None]
) -> list[RebuildResult]:
    results = []
    interrupts = InterruptCount(cpu)
    try:
        for count in REBUILD_GATEWAY_COUNTS:
            for case in WEIGHT_CASES:
                progress(f"weight changes, {count} gateways, {case.name}")
                results.append(measure_rebuild(count, case, changes, service, replay, pass_fd, interrupts))
    finally:
        interrupts.close()
    return results
