"""Section 3: what a weight change costs, and what the slowest datagram pays for it.

A change arrives as a registration datagram through the XDP program (BPF_PROG_TEST_RUN,
repeat 1, on lo; timed by the kernel). The schedule is then built a bounded step at a time by
the datagrams that follow: service datagrams, each its own repeat-1 run, are sent until the
new schedule is published. Every one of those runs is kept, so the table gives the slowest
run of any datagram (p99 and p100 over all changes) and the total CPU of one change: the sum
of its datagrams' run times minus as many plain service datagrams (median, same run). The
control program, which builds the whole schedule at once (the CLI's `weights set`), is timed
on the wall clock. Changes alternate one gateway between two weights, so each one rebuilds."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlOp
from ebpflb.bpf.libbpf import XdpMd
from ebpflb.scheduler import schedule

from .micro_checks import XDP_DROP, XDP_PASS, expect, expect_verdict
from .micro_ebpflb import EbpflbUnderTest, ebpflb_under_test
from .micro_packets import registration_frame, udp4_frame
from .micro_service import FIRST_GATEWAY_PORT, REG_PORT, SERVICE_PORT

LOOPBACK_IFINDEX = 1
MAX_DATAGRAMS_PER_CHANGE = 2000  # a build is about 25 steps; far more means it is stuck


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
    change_cpu_ns: list[float] = field(default_factory=list)  # total over a change's datagrams
    plain_service_ns: float = 0.0
    interleaved_plain_ns: list[float] = field(default_factory=list)  # one after each change: the noise floor
    control_change_ns: list[float] = field(default_factory=list)
    rebuilds: int = 0  # counted by the kernel, checked equal to the number of changes

    @property
    def every_run_ns(self) -> list[float]:
        return self.registration_ns + self.building_ns


def _run(lb: EbpflbUnderTest, frame: bytes, verdict: int) -> float:
    """One datagram arriving on lo; returns the kernel's run time in ns."""
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=LOOPBACK_IFINDEX)
    got, _, duration = libbpf.test_run(lb.xdp_fd, frame, 1, ctx=ctx)
    expect_verdict(got, verdict)
    return float(duration)


def _published(lb: EbpflbUnderTest) -> bool:
    state = lb.counters().state
    return state.sched_version == state.version


def measure_rebuild(count: int, case: WeightCase, changes: int) -> RebuildResult:
    first, second = case.alternate
    result = RebuildResult(
        count, case, (len(schedule(case.weights(count, first))), len(schedule(case.weights(count, second))))
    )
    with ebpflb_under_test(SERVICE_PORT, REG_PORT) as lb:
        ports = [FIRST_GATEWAY_PORT + i for i in range(count)]
        lb.add_static_owned_by_loopback(ports, case.weights(count, first))
        port = ports[-1]
        frames = {w: registration_frame(port, REG_PORT, w) for w in case.alternate}
        service = udp4_frame(40000, SERVICE_PORT, bytes(18))
        plain = [_run(lb, service, XDP_PASS) for _ in range(2000)]
        result.plain_service_ns = statistics.median(plain)
        other = {first: second, second: first}
        weight = first
        before = lb.counters().global_
        for _ in range(changes):
            weight = other[weight]
            runs = [_run(lb, frames[weight], XDP_DROP)]
            result.registration_ns.append(runs[0])
            while not _published(lb):
                expect(len(runs) < MAX_DATAGRAMS_PER_CHANGE, "a schedule build did not complete")
                runs.append(_run(lb, service, XDP_PASS))
                result.building_ns.append(runs[-1])
            result.datagrams_per_change.append(len(runs))
            result.change_cpu_ns.append(sum(runs) - len(runs) * result.plain_service_ns)
            # a datagram with nothing to build, in the same (cold) conditions: what p100 means here
            result.interleaved_plain_ns.append(_run(lb, service, XDP_PASS))
        result.changes = changes
        after = lb.counters()
        result.rebuilds = after.global_.rebuilds - before.rebuilds
        expect(result.rebuilds == changes, f"{result.rebuilds} schedules published for {changes} weight changes")
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


def run_rebuild_benchmarks(changes: int, progress: Callable[[str], None]) -> list[RebuildResult]:
    results = []
    for count in REBUILD_GATEWAY_COUNTS:
        for case in WEIGHT_CASES:
            progress(f"weight changes, {count} gateways, {case.name}")
            results.append(measure_rebuild(count, case, changes))
    return results
