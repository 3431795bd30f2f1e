"""Sections 1, 2 and 4: ns per datagram of ebpflb's service path, of the two rejected designs
and of ebpflb's non-service path, each against an XDP_PASS baseline measured the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .micro_checks import EbpflbService, EbpflbUntouched, FrameUnchanged, ScanChecked, SwrrChecked
from .micro_ebpflb import ebpflb_under_test
from .micro_objects import BenchObjects
from .micro_timing import Case, measure_interleaved

SERVICE_PORT = 2152
REG_PORT = 3000
OTHER_PORT = 5353
GATEWAY_COUNTS = (1, 8, 64, 256)
FIRST_GATEWAY_PORT = 20000


def gateway_set(count: int) -> tuple[list[int], list[int]]:
    """Ports and weights (1, 2, 3, 4, 1, 2, ...: a schedule cycle of 2.5 picks per gateway).
    A single gateway listens on the service port itself, so ebpflb can also be run without
    the harness: its rewrite then leaves the datagram as it was."""
    ports = [SERVICE_PORT] if count == 1 else [FIRST_GATEWAY_PORT + i for i in range(count)]
    weights = [1 + i % 4 for i in range(count)]
    return ports, weights


@dataclass
class GroupResult:
    gateways: int
    weights: list[int]
    cycle: int  # ebpflb's schedule length
    cases: dict[str, Case]


def run_group(
    objects: BenchObjects, count: int, service_frame: bytes, other_frame: bytes, rounds: int, round_s: float
) -> GroupResult:
    ports, weights = gateway_set(count)
    with ebpflb_under_test(SERVICE_PORT, REG_PORT) as lb:
        lb.add_static(ports, weights)
        objects.scan.set_gateways(ports, weights)
        objects.swrr.set_gateways(ports, weights)
        service = EbpflbService(lb)
        harness = objects.replay
        cases = {
            "baseline": Case("baseline", objects.pass_fd, service_frame, FrameUnchanged(service_frame), harness),
            "parse": Case("parse", objects.parse_only_fd, service_frame, FrameUnchanged(service_frame), harness),
            "ebpflb": Case("ebpflb", lb.xdp_fd, service_frame, service, harness, repeat_multiple=service.cycle),
            "scan": Case("scan", objects.scan.fd, service_frame, ScanChecked(objects.scan, ports, weights), harness),
            "swrr": Case("swrr", objects.swrr.fd, service_frame, SwrrChecked(objects.swrr, ports, weights), harness),
        }
        if count == 1:
            # without the harness: the gateway's port is the service port, so every repetition
            # is a service datagram again; and the non-service path, which rewrites nothing
            cases["pass-direct"] = Case("pass-direct", objects.pass_fd, service_frame, FrameUnchanged(service_frame))
            cases["ebpflb-direct"] = Case("ebpflb-direct", lb.xdp_fd, service_frame, service)
            cases["ebpflb-other"] = Case("ebpflb-other", lb.xdp_fd, other_frame, EbpflbUntouched(lb, other_frame))
        measure_interleaved(list(cases.values()), rounds, round_s)
        return GroupResult(count, weights, service.cycle, cases)


def run_service_benchmarks(
    objects: BenchObjects,
    service_frame: bytes,
    other_frame: bytes,
    rounds: int,
    round_s: float,
    progress: Callable[[str], None],
) -> list[GroupResult]:
    results = []
    for count in GATEWAY_COUNTS:
        progress(f"datagram path, {count} gateway(s)")
        results.append(run_group(objects, count, service_frame, other_frame, rounds, round_s))
    return results
