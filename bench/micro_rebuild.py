"""Section 3: the cost of a registration that changes a weight, i.e. a schedule rebuild.

Two ways in, both through the shipped object: a registration datagram run through the XDP
program with BPF_PROG_TEST_RUN (repeat 1, arriving on lo; timed by the kernel), and the
control program run by Instance.control(CtlOp.SET_WEIGHT) as the CLI does (wall clock).
Changes alternate one gateway between two weights so that every one rebuilds; the same
operations with an unchanged weight (heartbeats, no rebuild) are timed in between."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from ebpflb import libbpf
from ebpflb.layout import CtlOp
from ebpflb.libbpf import XdpMd
from ebpflb.scheduler import cycle_length

from .micro_checks import XDP_DROP, expect, expect_verdict
from .micro_ebpflb import EbpflbUnderTest, ebpflb_under_test
from .micro_packets import registration_frame
from .micro_service import FIRST_GATEWAY_PORT, REG_PORT, SERVICE_PORT

LOOPBACK_IFINDEX = 1



@dataclass(frozen=True)
class WeightCase:
    name: str
    base: int  # weight of every gateway but the last
    alternate: tuple[int, int]  # the last gateway's weights, taken in turn

    def weights(self, count: int, last: int) -> list[int]:
        return [self.base] * (count - 1) + [last]


WEIGHT_CASES = (
    WeightCase("small sum", 1, (1, 2)),  # cycle = N or N + 1
    WeightCase("large sum", 1000, (999, 1001)),  # gcd 1, sum > 4096: capped, 4096 picks
)
REBUILD_GATEWAY_COUNTS = (8, 64, 256)


@dataclass
class RebuildResult:
    gateways: int
    case: WeightCase
    cycles: tuple[int, int]  # schedule length with either alternate weight
    datagram_change_ns: list[float] = field(default_factory=list)
    datagram_same_ns: list[float] = field(default_factory=list)
    control_change_ns: list[float] = field(default_factory=list)
    control_same_ns: list[float] = field(default_factory=list)
    rebuilds: int = 0  # counted by the kernel, checked equal to the number of changes


def median_us(values: list[float]) -> float:
    return statistics.median(values) / 1000


def _datagram(lb: EbpflbUnderTest, frame: bytes) -> float:
    """One registration datagram arriving on lo; returns the kernel's run time in ns."""
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=LOOPBACK_IFINDEX)
    verdict, _, duration = libbpf.test_run(lb.xdp_fd, frame, 1, ctx=ctx)
    expect_verdict(verdict, XDP_DROP)  # registrations are consumed
    return float(duration)


def _control(lb: EbpflbUnderTest, port: int, weight: int) -> float:
    start = time.perf_counter_ns()
    lb.instance.control(CtlOp.SET_WEIGHT, port, weight)
    return float(time.perf_counter_ns() - start)


def measure_rebuild(count: int, case: WeightCase, budget_s: float, min_ops: int, max_ops: int) -> RebuildResult:
    first, second = case.alternate
    result = RebuildResult(
        count, case, (cycle_length(case.weights(count, first)), cycle_length(case.weights(count, second)))
    )
    with ebpflb_under_test(SERVICE_PORT, REG_PORT) as lb:
        ports = [FIRST_GATEWAY_PORT + i for i in range(count)]
        lb.add_static(ports, case.weights(count, first))
        port = ports[-1]
        frames = {w: registration_frame(port, REG_PORT, w) for w in case.alternate}
        other = {first: second, second: first}
        weight = first
        before = lb.counters().global_
        deadline = time.monotonic() + budget_s
        rounds = 0
        while rounds < max_ops and (rounds < min_ops or time.monotonic() < deadline):
            weight = other[weight]
            result.datagram_change_ns.append(_datagram(lb, frames[weight]))
            result.datagram_same_ns.append(_datagram(lb, frames[weight]))
            weight = other[weight]
            result.control_change_ns.append(_control(lb, port, weight))
            result.control_same_ns.append(_control(lb, port, weight))
            rounds += 1
        after = lb.counters()
        changes = 2 * rounds
        result.rebuilds = after.global_.rebuilds - before.rebuilds
        expect(result.rebuilds == changes, f"{result.rebuilds} schedule rebuilds for {changes} weight changes")
        accepted = after.global_.reg_accepted - before.reg_accepted
        expect(accepted == 2 * changes, f"{accepted} registrations accepted of {2 * changes}")
        expect(bytes(after.global_.reg_rejected) == bytes(before.reg_rejected), "a registration was rejected")
        final = [w for _, w in sorted(lb.slot_weights(after.state).values())]
        expect(final == case.weights(count, weight), "the gateway table does not hold the weights set")
        length = lb.active_schedule_length()
        expect(length == cycle_length(final), f"schedule of {length} picks, expected {cycle_length(final)}")
    return result


def run_rebuild_benchmarks(budget_s: float, progress: Callable[[str], None]) -> list[RebuildResult]:
    results = []
    for count in REBUILD_GATEWAY_COUNTS:
        for case in WEIGHT_CASES:
            progress(f"weight changes, {count} gateways, {case.name}")
            results.append(measure_rebuild(count, case, budget_s, min_ops=10, max_ops=2000))
    return results
