"""Checks run around every BPF_PROG_TEST_RUN of the benchmark: each proves, from the
programs' own counters, that every repetition took the path the row claims to measure."""

from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Protocol, Sequence

from .micro_ebpflb import EbpflbUnderTest
from .micro_models import lowest_ratio_counts, smooth_wrr_counts
from .micro_objects import LockedSwrr, ScanLowest
from .micro_packets import udp4_checksum_ok, udp_fields

XDP_ABORTED, XDP_DROP, XDP_PASS = 0, 1, 2
VERDICTS = {XDP_ABORTED: "XDP_ABORTED", XDP_DROP: "XDP_DROP", XDP_PASS: "XDP_PASS"}


class VerificationError(RuntimeError):
    pass


class Check(Protocol):
    what: str  # one line for the report: what was verified

    def before(self) -> object: ...

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None: ...


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise VerificationError(message)


def expect_verdict(verdict: int, wanted: int) -> None:
    expect(verdict == wanted, f"verdict {VERDICTS.get(verdict, verdict)}, expected {VERDICTS[wanted]}")


def expect_rewritten(out: bytes, ports: Sequence[int]) -> None:
    dest = udp_fields(out).dest
    expect(dest in ports, f"the last datagram went to port {dest}, not to a gateway")
    expect(udp4_checksum_ok(out), "the last datagram's UDP checksum does not verify")


class FrameUnchanged:
    """XDP_PASS with the frame byte for byte as sent."""

    what = "XDP_PASS, frame unchanged"

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    def before(self) -> object:
        return None

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect_verdict(verdict, XDP_PASS)
        expect(out == self.frame, "the frame was modified")


class EbpflbUntouched:
    """Not a service datagram: passed unchanged, and no counter of ebpflb moved."""

    what = "XDP_PASS, frame unchanged, no ebpflb counter moved"

    def __init__(self, lb: EbpflbUnderTest, frame: bytes) -> None:
        self.lb = lb
        self.frame = frame

    def before(self) -> object:
        return self.lb.counters()

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect_verdict(verdict, XDP_PASS)
        expect(out == self.frame, "the frame was modified")
        was, now = token.global_, self.lb.counters().global_  # type: ignore[attr-defined]
        expect(bytes(was) == bytes(now), "an ebpflb counter moved")


class EbpflbService:
    """Every repetition was a service datagram sent through the schedule of all N gateways:
    the service counter grew by exactly `repeat`, each gateway's packet counter by exactly
    its share of whole schedule cycles, no schedule rebuild or expiry happened, and the
    last datagram went to a gateway with a valid checksum."""

    what = "service +repeat; each gateway +repeat*w/sum(w) exactly; no rebuild"

    def __init__(self, lb: EbpflbUnderTest) -> None:
        self.lb = lb
        state = lb.counters().state
        self.gateways = lb.slot_weights(state)
        weights = [w for _, w in self.gateways.values()]
        self.divisor = reduce(gcd, weights)
        self.cycle = sum(weights) // self.divisor
        self.ports = [p for p, _ in self.gateways.values()]

    def before(self) -> object:
        return self.lb.counters()

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect_verdict(verdict, XDP_PASS)
        expect(repeat % self.cycle == 0, f"repeat {repeat} is not a whole number of {self.cycle}-pick cycles")
        was, now = token, self.lb.counters()
        service = now.global_.service - was.global_.service  # type: ignore[attr-defined]
        expect(service == repeat, f"{service} service datagrams counted for {repeat} repetitions")
        others = type(now.global_).from_buffer_copy(was.global_)  # type: ignore[attr-defined]
        others.service = now.global_.service
        expect(bytes(others) == bytes(now.global_), "a counter other than service moved (rebuild, expiry, ...)")
        expect(self.lb.slot_weights(now.state) == self.gateways, "the gateway table changed")
        for slot, (port, weight) in self.gateways.items():
            got = now.packets[slot] - was.packets[slot]  # type: ignore[attr-defined]
            wanted = repeat // self.cycle * (weight // self.divisor)
            expect(got == wanted, f"gateway {port} (weight {weight}) got {got} datagrams, expected {wanted}")
        expect_rewritten(out, self.ports)


class ScanChecked:
    """Every repetition ran the scan: its service counter grew by `repeat`, and each CPU's
    per-gateway counts equal the reference model's after that CPU's number of picks."""

    what = "service +repeat; per-gateway counts = reference model"

    def __init__(self, scan: ScanLowest, ports: Sequence[int], weights: Sequence[int]) -> None:
        self.scan, self.ports, self.weights = scan, list(ports), list(weights)

    def before(self) -> object:
        return sum(t.service for t in self.scan.table.read())

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect_verdict(verdict, XDP_PASS)
        tables = self.scan.table.read()
        service = sum(t.service for t in tables) - token  # type: ignore[operator]
        expect(service == repeat, f"{service} service datagrams counted for {repeat} repetitions")
        for cpu, table in enumerate(tables):
            got = [table.gw[i].packets for i in range(len(self.weights))]
            expect(got == lowest_ratio_counts(self.weights, table.service), f"CPU {cpu}: counts differ from the model")
        expect_rewritten(out, self.ports)


class SwrrChecked:
    """Every repetition stepped the locked smooth WRR: service grew by `repeat` and the
    per-gateway counts equal nginx's order after that many picks."""

    what = "service +repeat; per-gateway counts = nginx SWRR model"

    def __init__(self, swrr: LockedSwrr, ports: Sequence[int], weights: Sequence[int]) -> None:
        self.swrr, self.ports, self.weights = swrr, list(ports), list(weights)

    def before(self) -> object:
        return self.swrr.read().service

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect_verdict(verdict, XDP_PASS)
        table = self.swrr.read()
        service = table.service - token  # type: ignore[operator]
        expect(service == repeat, f"{service} service datagrams counted for {repeat} repetitions")
        got = [table.gw[i].packets for i in range(len(self.weights))]
        expect(got == smooth_wrr_counts(self.weights, table.service), "counts differ from the nginx SWRR model")
        expect_rewritten(out, self.ports)
