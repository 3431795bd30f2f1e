"""Section 5: flow affinity and reply NAT, each against its own harness's baseline in the same
rounds. With --affinity: a datagram whose flow is in the table ("flow found": the same client
every repetition; "many flows": the next of ACTIVE_FLOWS clients in turn, each already in the
table), and one that starts a new flow (a harness that gives each repetition the
next of a million clients: each misses the 65536-flow LRU table and is inserted, evicting). Reply NAT: ebpflb's tc
egress program on a reply from a gateway's port, under a tc harness that restores the reply's
source port and checksum, against a tc program that passes everything."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, cast

from ebpflb.bpf.layout import GlobalCounters
from ebpflb.bpf.object_file import REPLY_NAT_PROGRAM

from .micro_checks import XDP_PASS, expect, expect_rewritten, expect_verdict
from .micro_ebpflb import EbpflbUnderTest, ebpflb_under_test
from .micro_objects import BenchObjects, ReplayClients, ReplayHarness
from .micro_packets import UDP_OFFSET, udp4_checksum_ok, udp4_frame, udp_fields
from .micro_service import FIRST_GATEWAY_PORT, REG_PORT, SERVICE_PORT
from .micro_timing import Case, measure_interleaved

TC_ACT_OK = 0
GATEWAYS = 3
AFFINITY_S = 3600  # no flow expires during the run
CLIENT_PORT = 40000
ACTIVE_FLOWS = 1024  # clients served in turn, as in make bench-e2e's affinity run


class AnyPass:
    what = "XDP_PASS"

    def before(self) -> object:
        return None

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect_verdict(verdict, XDP_PASS)


class Affinity:
    """Every repetition balanced; `new_flows` of them (per repeat) created a flow."""

    def __init__(self, lb: EbpflbUnderTest, ports: list[int], new_flow_each: bool, flows: int = 1) -> None:
        self.lb = lb
        self.ports = ports
        self.new_flow_each = new_flow_each
        self.flows = flows  # distinct clients the harness cycles through
        self.what = "balanced, a new flow each" if new_flow_each else f"balanced, each of {flows} flows found"

    def before(self) -> object:
        return self.lb.counters().global_

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        before, after = cast(GlobalCounters, token), self.lb.counters().global_
        expect_verdict(verdict, XDP_PASS)
        expect(after.service - before.service == repeat, "not every repetition was balanced")
        created = after.flows_created - before.flows_created
        if self.new_flow_each:
            expect(created == repeat, f"{created} flows created in {repeat} new-flow datagrams")
        else:
            expect(created <= self.flows, f"{created} flows created for {self.flows} clients")
        expect_rewritten(out, self.ports)


class ReplyNatted:
    """Every repetition given the service port as source, checksum valid."""

    what = "source port = service port, checksum verifies"

    def __init__(self, lb: EbpflbUnderTest) -> None:
        self.lb = lb

    def before(self) -> object:
        return self.lb.counters().global_.replies_nat

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect(verdict == TC_ACT_OK, f"tc verdict {verdict}")
        expect(self.lb.counters().global_.replies_nat - cast(int, token) == repeat, "not every reply was NATed")
        expect(udp_fields(out).source == SERVICE_PORT, "the reply does not leave from the service port")
        expect(udp4_checksum_ok(out), "the NATed reply's checksum does not verify")


class TcUnchanged:
    what = "TC_ACT_OK, frame unchanged"

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    def before(self) -> object:
        return None

    def after(self, token: object, repeat: int, verdict: int, out: bytes) -> None:
        expect(verdict == TC_ACT_OK, f"tc verdict {verdict}")
        expect(out == self.frame, "the frame was modified")


@dataclass
class FlowResult:
    cases: dict[str, Case]


def run_flow_benchmarks(
    objects: BenchObjects,
    paths: dict[str, Path],
    service_frame: bytes,
    rounds: int,
    round_s: float,
    progress: Callable[[str], None],
) -> FlowResult:
    progress("affinity and reply NAT")
    dest, check = service_frame[UDP_OFFSET + 2 : UDP_OFFSET + 4], service_frame[UDP_OFFSET + 6 : UDP_OFFSET + 8]
    source = service_frame[UDP_OFFSET : UDP_OFFSET + 2]
    ip = UDP_OFFSET - 20
    addr_low, ip_check = service_frame[ip + 14 : ip + 16], service_frame[ip + 10 : ip + 12]
    new_flow = ReplayHarness(
        paths["replay_new_flow"],
        "replay_new_flow",
        struct.pack("<I", UDP_OFFSET) + dest + check + source + addr_low + ip_check + bytes(2),
    )
    ports = [FIRST_GATEWAY_PORT + i for i in range(GATEWAYS)]
    reply = udp4_frame(ports[0], CLIENT_PORT, bytes(range(32)))
    clients = ReplayClients(paths["replay_clients"], service_frame, ACTIVE_FLOWS)
    tc = ReplayHarness(
        paths["tc_replay"],
        "tc_replay",
        struct.pack("<I", UDP_OFFSET) + reply[UDP_OFFSET : UDP_OFFSET + 2] + reply[UDP_OFFSET + 6 : UDP_OFFSET + 8],
    )
    try:
        with ebpflb_under_test(SERVICE_PORT, REG_PORT, affinity_s=AFFINITY_S) as lb:
            lb.add_static(ports, [1] * GATEWAYS)
            assert lb.obj is not None
            cases = {
                "pass": Case("pass", objects.pass_fd, service_frame, AnyPass(), objects.replay),
                "affinity-found": Case(
                    "affinity-found", lb.xdp_fd, service_frame, Affinity(lb, ports, False), objects.replay
                ),
                "pass-clients": Case("pass-clients", objects.pass_fd, service_frame, AnyPass(), clients),
                "affinity-many": Case(
                    "affinity-many",
                    lb.xdp_fd,
                    service_frame,
                    Affinity(lb, ports, False, ACTIVE_FLOWS),
                    clients,
                    repeat_multiple=ACTIVE_FLOWS,
                ),
                "pass-new-flow": Case("pass-new-flow", objects.pass_fd, service_frame, AnyPass(), new_flow),
                "affinity-new": Case("affinity-new", lb.xdp_fd, service_frame, Affinity(lb, ports, True), new_flow),
                "tc-pass": Case("tc-pass", tc.obj.program_fd("tc_pass"), reply, TcUnchanged(reply), tc),
                "reply-nat": Case("reply-nat", lb.obj.program_fd(REPLY_NAT_PROGRAM), reply, ReplyNatted(lb), tc),
            }
            measure_interleaved(list(cases.values()), rounds, round_s)
            return FlowResult(cases)
    finally:
        new_flow.obj.close()
        clients.obj.close()
        tc.obj.close()

