"""Packet-level fixtures through BPF_PROG_TEST_RUN, katran style.

Each case: a description, the input packet, the gateways registered first, the expected
verdict and output bytes, and the exact change of the global counters. Expected outputs are
built from scratch by Scapy with the gateway's port (checksum recomputed over the whole
datagram), never derived from the input, so a wrong incremental checksum update fails.
Every test runs inside a fresh network namespace, where test_run's packets arrive on its lo.

Over 300 lines because the case tables are the test: every packet shape with its expected
output, side by side, so a reader checks coverage in one place."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, PadN
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from ebpflb import scheduler
from ebpflb.bpf.layout import MAX_GATEWAYS, CtlOp

from .. import packets as P
from ..dataplane import XDP_DROP, XDP_PASS, Dataplane, default_config, loaded, on_one_cpu
from ..netns import NetNS

pytestmark = pytest.mark.kernel

GW_PORT = 5001
QINQ = ((P.ETH_P_8021AD, 100), (P.ETH_P_8021Q, 5))
DOT1Q = ((P.ETH_P_8021Q, 5),)
BIG_PAYLOAD = bytes(range(256)) * 2  # large enough to be split into fragments


@dataclass(frozen=True)
class Case:
    description: str
    packet: bytes
    verdict: int
    expected: bytes
    gateways: tuple[tuple[int, int], ...] = ((GW_PORT, 1),)
    counters: dict[str, int] = field(default_factory=dict)  # exact deltas; every other one stays


def rewritten(description: str, build: P.PortBuilder) -> Case:
    """A service datagram that must leave with the gateway's port and a valid checksum."""
    packet, expected = build(P.SERVICE_PORT), build(GW_PORT)
    assert packet != expected
    return Case(description, packet, XDP_PASS, expected, counters={"service": 1})


def unchanged(description: str, packet: bytes, counters: dict[str, int] | None = None, **kw: object) -> Case:
    return Case(description, packet, XDP_PASS, packet, counters=counters or {}, **kw)  # type: ignore[arg-type]


def hbh_16_bytes() -> Packet:
    """A hop-by-hop header of two 8-byte units, so its length field matters."""
    return IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * 12)])


def ext_chain(count: int) -> list[Packet]:
    kinds = [P.hop_by_hop, P.dest_opts, P.routing]
    return [kinds[i % len(kinds)]() for i in range(count)]


def zero_after_rewrite4(port: int) -> bytes:
    payload = P.payload_for_checksum(lambda pl: P.udp4(GW_PORT, pl), 0xFFFF)
    return P.udp4(port, payload)


def zero_after_rewrite6(port: int) -> bytes:
    payload = P.payload_for_checksum(lambda pl: P.udp6(GW_PORT, pl), 0xFFFF)
    return P.udp6(port, payload)


def zero_before_rewrite4(port: int) -> bytes:
    payload = P.payload_for_checksum(lambda pl: P.udp4(P.SERVICE_PORT, pl), 0xFFFF)
    return P.udp4(port, payload)


def zero_before_rewrite6(port: int) -> bytes:
    payload = P.payload_for_checksum(lambda pl: P.udp6(P.SERVICE_PORT, pl), 0xFFFF)
    return P.udp6(port, payload)


def swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


def double_carry_checksum(old_port: int, new_port: int, swapped: bool) -> int:
    """The input checksum c for which ~c + ~old + new = 0x1ffff: folding that sum carries a
    second time, which a single fold (or a 16-bit add) loses. A little-endian host adds the
    fields as stored, byte-swapped, where the carries fall elsewhere: both orders are cases."""
    order = swap16 if swapped else (lambda v: v)
    complement = 0x1FFFF - (~order(old_port) & 0xFFFF) - order(new_port)
    assert 0 <= complement <= 0xFFFF
    return order(~complement & 0xFFFF)


def double_carry(family: int, swapped: bool) -> P.PortBuilder:
    udp = P.udp4 if family == 4 else P.udp6
    target = double_carry_checksum(P.SERVICE_PORT, GW_PORT, swapped)
    payload = P.payload_for_checksum(lambda pl: udp(P.SERVICE_PORT, pl), target)
    return lambda port: udp(port, payload)


def cut(packet: bytes, length: int) -> bytes:
    assert length < len(packet)
    return packet[:length]


ETH = 14
IPV4 = 20
IPV6 = 40

BALANCED = [
    rewritten("IPv4", lambda port: P.udp4(port)),
    rewritten("IPv4 from a non-loopback client", lambda port: P.udp4(port, src="10.1.2.3")),
    rewritten("IPv4 empty payload", lambda port: P.udp4(port, b"")),
    rewritten("IPv4 odd payload length", lambda port: P.udp4(port, b"odd")),
    rewritten("IPv4 don't-fragment set (not a fragment)", lambda port: P.udp4(port, dont_fragment=True)),
    rewritten("IPv4 1400-byte payload", lambda port: P.udp4(port, bytes(range(200)) * 7)),
    rewritten("IPv6", lambda port: P.udp6(port)),
    rewritten("IPv6 from a global client", lambda port: P.udp6(port, src="2001:db8::7")),
    rewritten("IPv6 odd payload length", lambda port: P.udp6(port, b"odd")),
    rewritten("802.1Q IPv4", lambda port: P.udp4(port, vlans=DOT1Q)),
    rewritten("802.1Q IPv6", lambda port: P.udp6(port, vlans=DOT1Q)),
    rewritten("802.1ad+802.1Q (QinQ) IPv4", lambda port: P.udp4(port, vlans=QINQ)),
    rewritten("802.1ad+802.1Q (QinQ) IPv6", lambda port: P.udp6(port, vlans=QINQ)),
    rewritten("two 802.1Q tags IPv4", lambda port: P.udp4(port, vlans=DOT1Q * 2)),
    rewritten("IPv4 with router alert option (ihl 6)", lambda port: P.udp4(port, options=[IPOption_Router_Alert()])),
    rewritten("IPv4 with 40 option bytes (ihl 15)", lambda port: P.udp4(port, options=[IPOption_NOP()] * 40)),
    rewritten("IPv6 hop-by-hop", lambda port: P.udp6(port, ext=[P.hop_by_hop()])),
    rewritten("IPv6 16-byte hop-by-hop", lambda port: P.udp6(port, ext=[hbh_16_bytes()])),
    rewritten("IPv6 routing", lambda port: P.udp6(port, ext=[P.routing()])),
    rewritten("IPv6 destination options", lambda port: P.udp6(port, ext=[P.dest_opts()])),
    rewritten(
        "IPv6 hop-by-hop, routing, destination options",
        lambda port: P.udp6(port, ext=[P.hop_by_hop(), P.routing(), P.dest_opts()]),
    ),
    rewritten("IPv6 six extension headers (the most walked)", lambda port: P.udp6(port, ext=ext_chain(6))),
    rewritten(
        "QinQ IPv6 hop-by-hop and 16-byte hop-by-hop",
        lambda port: P.udp6(port, vlans=QINQ, ext=[P.hop_by_hop(), hbh_16_bytes()]),
    ),
    rewritten("IPv4 first fragment (MF, offset 0)", lambda port: P.fragments4(port, BIG_PAYLOAD)[0]),
    rewritten("IPv6 first fragment (offset 0, M)", lambda port: P.fragments6(port, BIG_PAYLOAD)[0]),
    rewritten("IPv6 atomic fragment (offset 0, no M)", lambda port: P.udp6(port, ext=[IPv6ExtHdrFragment(id=9, m=0)])),
    Case(
        "IPv4 UDP checksum 0 (none) stays 0",
        P.udp4(P.SERVICE_PORT, chksum=0),
        XDP_PASS,
        P.udp4(GW_PORT, chksum=0),
        counters={"service": 1},
    ),
    rewritten("IPv4 checksum that becomes 0 is sent as 0xffff", zero_after_rewrite4),
    rewritten("IPv6 checksum that becomes 0 is sent as 0xffff", zero_after_rewrite6),
    rewritten("IPv4 input checksum 0xffff (computed 0)", zero_before_rewrite4),
    rewritten("IPv6 input checksum 0xffff (computed 0)", zero_before_rewrite6),
    *(
        rewritten(f"IPv{family} incremental sum that carries twice ({order})", double_carry(family, order == "swapped"))
        for family in (4, 6)
        for order in ("big-endian", "swapped")
    ),
]

PASSED = [
    *(
        unchanged(f"IPv4 later fragment {i}", frag)
        for i, frag in enumerate(P.fragments4(P.SERVICE_PORT, BIG_PAYLOAD)[1:], 1)
    ),
    *(
        unchanged(f"IPv6 later fragment {i}", frag)
        for i, frag in enumerate(P.fragments6(P.SERVICE_PORT, BIG_PAYLOAD)[1:], 1)
    ),
    unchanged("IPv6 UDP checksum 0 (invalid): not balanced", P.udp6(P.SERVICE_PORT, chksum=0), {"unbalanced": 1}),
    unchanged("IPv6 seven extension headers (past the walk limit)", P.udp6(P.SERVICE_PORT, ext=ext_chain(7))),
    unchanged("three VLAN tags (past the tag limit)", P.udp4(P.SERVICE_PORT, vlans=QINQ + DOT1Q)),
    unchanged("TCP to the service port", P.tcp4(P.SERVICE_PORT)),
    unchanged("ICMP", P.icmp4()),
    unchanged("ICMPv6", P.icmp6()),
    unchanged("ARP", bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP())),
    unchanged("UDP to another port", P.udp4(P.SERVICE_PORT + 1)),
    unchanged("UDP from the service port to another port", P.udp4(9999, sport=P.SERVICE_PORT)),
    unchanged("IPv6 UDP to another port", P.udp6(53)),
    unchanged("IPv4 AH-protected UDP", P.ah4(P.SERVICE_PORT)),
    unchanged("IPv6 AH-protected UDP", P.ah6(P.SERVICE_PORT)),
    unchanged("IPv4 ESP", P.esp4()),
    unchanged("IPv6 ESP", P.esp6()),
    unchanged("no gateway: passed", P.udp4(P.SERVICE_PORT), {"no_gateway_passed": 1}, gateways=()),
    unchanged("no gateway, IPv6: passed", P.udp6(P.SERVICE_PORT), {"no_gateway_passed": 1}, gateways=()),
]

FULL4 = P.udp4(P.SERVICE_PORT)
FULL6 = P.udp6(P.SERVICE_PORT)
TRUNCATED = [
    unchanged("Ethernet header only, IPv4 EtherType", cut(FULL4, ETH)),
    unchanged("802.1Q tag cut short", cut(P.udp4(P.SERVICE_PORT, vlans=DOT1Q), ETH + 2)),
    unchanged("QinQ inner tag cut short", cut(P.udp4(P.SERVICE_PORT, vlans=QINQ), ETH + 4 + 2)),
    unchanged("IPv4 header cut short", cut(FULL4, ETH + 10)),
    unchanged("IPv4 options cut short (ihl 15)", cut(P.udp4(P.SERVICE_PORT, options=[IPOption_NOP()] * 40), ETH + 40)),
    unchanged("IPv4 UDP header cut short", cut(FULL4, ETH + IPV4 + 6)),
    unchanged("IPv6 header cut short", cut(FULL6, ETH + 30)),
    unchanged("IPv6 UDP header cut short", cut(FULL6, ETH + IPV6 + 7)),
    unchanged("IPv6 extension header cut short", cut(P.udp6(P.SERVICE_PORT, ext=[P.hop_by_hop()]), ETH + IPV6 + 1)),
    unchanged("IPv6 16-byte hop-by-hop cut inside", cut(P.udp6(P.SERVICE_PORT, ext=[hbh_16_bytes()]), ETH + IPV6 + 12)),
    unchanged(
        "IPv6 fragment header cut short",
        cut(P.udp6(P.SERVICE_PORT, ext=[IPv6ExtHdrFragment(id=1, m=1)]), ETH + IPV6 + 4),
    ),
]


def corrupt(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1 :]


MALFORMED = [
    unchanged("IPv4 ihl 4 (below the minimum)", corrupt(FULL4, ETH, 0x44)),
    unchanged("IPv4 ihl 15 without options: UDP past the end", corrupt(FULL4, ETH, 0x4F)),
    unchanged("IPv4 EtherType carrying version 6", corrupt(FULL4, ETH, 0x65)),
    unchanged("IPv6 EtherType carrying version 4", corrupt(FULL6, ETH, 0x45)),
]


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def hex_lines(data: bytes) -> str:
    return "\n".join(f"    {i:04x}  {data[i : i + 16].hex(' ')}" for i in range(0, len(data), 16))


def describe_mismatch(case: Case, verdict: int, out: bytes) -> str:
    def show(name: str, data: bytes) -> str:
        try:
            summary = Ether(data).summary()
        except Exception:  # a truncated frame may not even parse
            summary = "(unparsable)"
        return f"  {name}: {len(data)} bytes, {summary}\n{hex_lines(data)}"

    return "\n".join(
        [
            f"{case.description}: verdict {verdict} (expected {case.verdict})",
            show("input", case.packet),
            show("expected", case.expected),
            show("actual", out),
        ]
    )


def test_reset_gives_the_state_of_a_fresh_load(dataplane: Dataplane) -> None:
    """The shared load is only as good as its reset: every pinned byte must be zero again."""
    dataplane.run(P.registration4(GW_PORT, 3))
    dataplane.run(P.udp4(P.SERVICE_PORT))
    dataplane.run(P.registration4(GW_PORT, 70000))
    assert dataplane.gateways() and any(dataplane.counters().values())
    dataplane.reset()
    snapshot = dataplane.instance.snapshot(sweep=False)
    assert bytes(snapshot.state) == bytes(len(bytes(snapshot.state)))
    assert not any(dataplane.counters().values()) and snapshot.gateways == []
    assert dataplane.run(P.udp4(P.SERVICE_PORT)) == (XDP_PASS, P.udp4(P.SERVICE_PORT))
    assert dataplane.counters()["no_gateway_passed"] == 1


def run_case(dataplane: Dataplane, case: Case) -> None:
    for port, weight in case.gateways:
        dataplane.instance.control(CtlOp.ADD_STATIC, port=port, weight=weight)
    before = dataplane.counters()
    gateway_before = {g.port: g for g in dataplane.instance.snapshot(sweep=False).gateways}
    verdict, out = dataplane.run(case.packet)
    assert (verdict, out) == (case.verdict, case.expected), describe_mismatch(case, verdict, out)
    assert counter_delta(before, dataplane.counters()) == case.counters, case.description
    if case.counters.get("service"):
        # the chosen gateway counts the datagram and its UDP length (header and payload)
        gateway = {g.port: g for g in dataplane.instance.snapshot(sweep=False).gateways}[GW_PORT]
        udp_length = P.udp_length(case.packet)
        assert gateway.packets - gateway_before[GW_PORT].packets == 1
        assert gateway.bytes - gateway_before[GW_PORT].bytes == udp_length


@pytest.mark.parametrize("case", BALANCED, ids=lambda c: c.description)
def test_service_datagram_is_rewritten(dataplane: Dataplane, case: Case) -> None:
    run_case(dataplane, case)


@pytest.mark.parametrize("case", PASSED, ids=lambda c: c.description)
def test_other_traffic_passes_unchanged(dataplane: Dataplane, case: Case) -> None:
    run_case(dataplane, case)


@pytest.mark.parametrize("case", TRUNCATED + MALFORMED, ids=lambda c: c.description)
def test_bad_headers_pass_unchanged(dataplane: Dataplane, case: Case) -> None:
    run_case(dataplane, case)


def random_datagram(rng: random.Random, k: int) -> P.PortBuilder:
    payload = rng.randbytes(rng.randint(0, 40))
    sport = rng.randint(1, 65535)
    vlans = rng.choice([(), DOT1Q, QINQ])
    if rng.random() < 0.5:
        return lambda port: P.udp4(port, payload, sport=sport, src=f"10.0.{k % 256}.1", vlans=vlans)
    return lambda port: P.udp6(port, payload, sport=sport, src=f"2001:db8::{k:x}", vlans=vlans)


def test_random_datagrams_leave_with_scratch_checksums(dataplane: Dataplane) -> None:
    """Random payloads, families, tags and gateway ports (below and above the service port,
    and the extremes 1 and 65535): each output must equal Scapy's from-scratch build for the
    gateway the scheduler model picks, so every carry path of the incremental update is hit."""
    rng = random.Random(2152)
    candidates = [p for p in range(1, 65536) if p not in (P.SERVICE_PORT, P.REG_PORT)]
    ports = [1, 65535, P.SERVICE_PORT - 1, P.SERVICE_PORT + 1, *rng.sample(candidates, 44)]
    for port in ports:
        dataplane.instance.control(CtlOp.ADD_STATIC, port=port, weight=rng.randint(1, 4))
    by_slot = sorted((slot, port, weight) for port, (slot, weight) in dataplane.gateways().items())
    assert [slot for slot, _, _ in by_slot] == list(range(len(ports)))
    count = 300
    with on_one_cpu() as cpu:
        picks = scheduler.sequence([weight for _, _, weight in by_slot], count, cpu=cpu)
        for k in range(count):
            build = random_datagram(rng, k)
            case = Case(f"random datagram {k}", build(P.SERVICE_PORT), XDP_PASS, build(by_slot[picks[k]][1]))
            verdict, out = dataplane.run(case.packet)
            assert (verdict, out) == (case.verdict, case.expected), describe_mismatch(case, verdict, out)


# ---------------------------------------------------------------- registrations


@dataclass(frozen=True)
class Registration:
    description: str
    packet: bytes
    table: dict[int, int]  # port -> weight of every gateway afterwards
    counters: dict[str, int]
    setup: tuple[bytes, ...] = ()  # registration datagrams accepted first
    changes: bool = False  # membership or a weight changed: a schedule build is pending


def accepted(
    description: str, packet: bytes, table: dict[int, int], changed: bool = True, setup: Sequence[bytes] = ()
) -> Registration:
    """An accepted registration; a change of membership or weight leaves a schedule build
    pending (later datagrams or the control program complete it)."""
    return Registration(description, packet, table, {"reg_accepted": 1}, tuple(setup), changed)


def rejected(
    description: str, packet: bytes, reason: str, setup: Sequence[bytes] = (), table: dict[int, int] | None = None
) -> Registration:
    return Registration(description, packet, table or {}, {f"rejected_{reason}": 1}, tuple(setup))


R4, R6 = P.registration4, P.registration6
REGISTRATIONS = [
    accepted("IPv4 from 127.0.0.1", R4(GW_PORT, 7), {GW_PORT: 7}),
    accepted("IPv4 from 127.255.0.9 (all of 127/8)", R4(GW_PORT, 7, src="127.255.0.9"), {GW_PORT: 7}),
    accepted("IPv6 from ::1", R6(GW_PORT, 7), {GW_PORT: 7}),
    accepted("bytes after the weight are ignored", R4(GW_PORT, 7, extra=b"reserved"), {GW_PORT: 7}),
    accepted("weight 1", R4(GW_PORT, 1), {GW_PORT: 1}),
    accepted("weight 65535", R6(GW_PORT, 65535), {GW_PORT: 65535}),
    accepted("IPv4 with don't-fragment set", R4(GW_PORT, 7, dont_fragment=True), {GW_PORT: 7}),
    accepted("IPv4 with options", R4(GW_PORT, 7, options=[IPOption_Router_Alert()]), {GW_PORT: 7}),
    accepted(
        "IPv4 without UDP checksum", P.udp4(P.REG_PORT, P.weight_payload(7), sport=GW_PORT, chksum=0), {GW_PORT: 7}
    ),
    accepted(
        "802.1Q-tagged registration", P.udp4(P.REG_PORT, P.weight_payload(3), sport=GW_PORT, vlans=DOT1Q), {GW_PORT: 3}
    ),
    accepted("second gateway", R4(GW_PORT + 1, 2), {GW_PORT: 7, GW_PORT + 1: 2}, setup=[R4(GW_PORT, 7)]),
    accepted("heartbeat, same weight", R4(GW_PORT, 7), {GW_PORT: 7}, changed=False, setup=[R4(GW_PORT, 7)]),
    rejected("heartbeat over IPv6 of an IPv4 gateway", R6(GW_PORT, 7), "NOT_OWNER", [R4(GW_PORT, 7)], {GW_PORT: 7}),
    rejected(
        "re-weight from another loopback address",
        R4(GW_PORT, 9, src="127.0.0.2"),
        "NOT_OWNER",
        [R4(GW_PORT, 7)],
        {GW_PORT: 7},
    ),
    rejected("removal from another address", R6(GW_PORT, 0), "NOT_OWNER", [R4(GW_PORT, 7)], {GW_PORT: 7}),
    rejected("privileged port 1023 (default --gateway-ports)", R4(1023, 7), "PORT_NOT_ALLOWED"),
    accepted("weight change", R4(GW_PORT, 9), {GW_PORT: 9}, setup=[R4(GW_PORT, 7)]),
    accepted(
        "weight 0 removes at once",
        R4(GW_PORT, 0),
        {GW_PORT + 1: 3},
        setup=[R4(GW_PORT, 7), R4(GW_PORT + 1, 3)],
    ),
    accepted("weight 0 for a port without gateway changes nothing", R4(GW_PORT, 0), {}, changed=False),
    rejected("IPv4 from 10.0.0.1", R4(GW_PORT, 7, src="10.0.0.1"), "NOT_LOOPBACK"),
    rejected("IPv4 from 128.0.0.1", R4(GW_PORT, 7, src="128.0.0.1"), "NOT_LOOPBACK"),
    rejected("IPv6 from 2001:db8::1", R6(GW_PORT, 7, src="2001:db8::1"), "NOT_LOOPBACK"),
    rejected("IPv6 from ::2", R6(GW_PORT, 7, src="::2"), "NOT_LOOPBACK"),
    rejected("IPv6 from ::ffff:127.0.0.1", R6(GW_PORT, 7, src="::ffff:127.0.0.1"), "NOT_LOOPBACK"),
    rejected(
        "non-loopback source with a short payload",
        P.udp4(P.REG_PORT, b"", sport=GW_PORT, src="10.0.0.1"),
        "NOT_LOOPBACK",
    ),
    rejected(
        "non-loopback source cannot remove a gateway",
        R4(GW_PORT, 0, src="10.0.0.1"),
        "NOT_LOOPBACK",
        setup=[R4(GW_PORT, 7)],
        table={GW_PORT: 7},
    ),
    rejected("source port 0", R4(0, 7), "BAD_REQUEST"),
    rejected("empty payload", P.udp4(P.REG_PORT, b"", sport=GW_PORT), "SHORT_PAYLOAD"),
    rejected("3-byte payload", P.udp4(P.REG_PORT, b"\0\0\7", sport=GW_PORT), "SHORT_PAYLOAD"),
    rejected("IPv6 3-byte payload", P.udp6(P.REG_PORT, b"\0\0\7", sport=GW_PORT), "SHORT_PAYLOAD"),
    rejected("UDP length 11 with 4 payload bytes", P.with_udp_length(R4(GW_PORT, 7), 11), "SHORT_PAYLOAD"),
    rejected(
        "UDP length 12, frame cut after 2 payload bytes", cut(R4(GW_PORT, 7), ETH + IPV4 + 8 + 2), "SHORT_PAYLOAD"
    ),
    rejected("weight 65536", R4(GW_PORT, 65536), "WEIGHT_RANGE"),
    rejected("weight 2^32-1", R6(GW_PORT, 0xFFFFFFFF), "WEIGHT_RANGE"),
    rejected(
        "weight 65536 leaves an existing gateway alone",
        R4(GW_PORT, 65536),
        "WEIGHT_RANGE",
        setup=[R4(GW_PORT, 7)],
        table={GW_PORT: 7},
    ),
    rejected(
        "IPv4 first fragment",
        P.fragments4(P.REG_PORT, P.weight_payload(7, BIG_PAYLOAD), sport=GW_PORT)[0],
        "MALFORMED",
    ),
    rejected(
        "IPv6 first fragment",
        P.fragments6(P.REG_PORT, P.weight_payload(7, BIG_PAYLOAD), sport=GW_PORT)[0],
        "MALFORMED",
    ),
    rejected(
        "IPv6 atomic fragment (offset 0, no M)",
        P.udp6(P.REG_PORT, P.weight_payload(7), sport=GW_PORT, ext=[IPv6ExtHdrFragment(id=9, m=0)]),
        "MALFORMED",
    ),
    rejected("IPv6 zero checksum", R6(GW_PORT, 7, chksum=0), "MALFORMED"),
    rejected("UDP length 4 (below the header)", P.with_udp_length(R4(GW_PORT, 7), 4), "MALFORMED"),
]


def send_registrations(dataplane: Dataplane, datagrams: Sequence[bytes]) -> None:
    for datagram in datagrams:
        verdict, _ = dataplane.run(datagram)
        assert verdict == XDP_DROP


def weights_by_port(dataplane: Dataplane) -> dict[int, int]:
    return {port: weight for port, (_, weight) in dataplane.gateways().items()}


@pytest.mark.parametrize("case", REGISTRATIONS, ids=lambda c: c.description)
def test_registration(dataplane: Dataplane, case: Registration) -> None:
    send_registrations(dataplane, case.setup)
    dataplane.instance.control(CtlOp.SWEEP)  # completes the schedule build the setup left pending
    before = dataplane.counters()
    verdict, out = dataplane.run(case.packet)
    # consumed whether accepted or rejected, and never modified
    expected = Case(case.description, case.packet, XDP_DROP, case.packet)
    assert (verdict, out) == (XDP_DROP, case.packet), describe_mismatch(expected, verdict, out)
    assert counter_delta(before, dataplane.counters()) == case.counters, case.description
    state = dataplane.state()
    assert (state.sched_version != state.version) == case.changes
    assert weights_by_port(dataplane) == case.table
    assert all(not g.is_static for g in dataplane.instance.snapshot(sweep=False).gateways)


def test_later_fragment_to_registration_port_passes(dataplane: Dataplane) -> None:
    """A later fragment has no UDP header, so nothing says it is a registration."""
    later = P.fragments4(P.REG_PORT, P.weight_payload(7, BIG_PAYLOAD), sport=GW_PORT)[1]
    before = dataplane.counters()
    assert dataplane.run(later) == (XDP_PASS, later)
    assert counter_delta(before, dataplane.counters()) == {}
    assert dataplane.gateways() == {}


def test_heartbeat_refreshes_last_seen(dataplane: Dataplane) -> None:
    send_registrations(dataplane, [R4(GW_PORT, 7)])
    first = dataplane.state()
    time.sleep(0.05)  # the coarse clock ticks every few milliseconds
    send_registrations(dataplane, [R4(GW_PORT, 7)])
    second = dataplane.state()
    slot = dataplane.gateways()[GW_PORT][0]
    assert second.gw[slot].last_seen_ns > first.gw[slot].last_seen_ns
    assert second.version == first.version  # same weight: no change, no rebuild
    assert second.count == 1


def test_removed_slot_is_reused_last_in_first_out(dataplane: Dataplane) -> None:
    send_registrations(dataplane, [R4(port, 1) for port in (6000, 6001, 6002, 6003)])
    send_registrations(dataplane, [R4(6001, 0), R4(6002, 0)])
    send_registrations(dataplane, [R4(7000, 1), R4(7001, 1), R4(7002, 1)])
    slots = {port: slot for port, (slot, _) in dataplane.gateways().items()}
    assert slots == {6000: 0, 6003: 3, 7000: 2, 7001: 1, 7002: 4}


def test_table_full(dataplane: Dataplane) -> None:
    ports = list(range(10000, 10000 + MAX_GATEWAYS))
    send_registrations(dataplane, [R4(port, 1) for port in ports])
    assert sorted(dataplane.gateways()) == ports
    before = dataplane.counters()
    overflow = R4(20000, 1)
    assert dataplane.run(overflow) == (XDP_DROP, overflow)
    assert counter_delta(before, dataplane.counters()) == {"rejected_TABLE_FULL": 1}
    assert sorted(dataplane.gateways()) == ports

    # a full table still takes heartbeats and weight changes of its gateways
    before = dataplane.counters()
    send_registrations(dataplane, [R4(ports[0], 1), R4(ports[1], 5)])
    assert counter_delta(before, dataplane.counters()) == {"reg_accepted": 2}
    assert dataplane.gateways()[ports[1]] == (1, 5)

    # and a removal makes room for one more, in the slot just freed
    send_registrations(dataplane, [R4(ports[7], 0), overflow])
    assert dataplane.gateways()[20000] == (7, 1)
    assert len(dataplane.gateways()) == MAX_GATEWAYS


def test_registration_from_another_device_is_refused(pin_path: str, netns: NetNS) -> None:
    """test_run resolves xdp_md.ingress_ifindex in the caller's network namespace, so the
    veth made here is looked up while this thread is inside that namespace."""
    netns.ip("link", "add", "ebl-in", "type", "veth", "peer", "name", "ebl-peer")
    netns.ip("link", "set", "ebl-in", "up")
    with netns.entered(), loaded(pin_path) as dataplane:
        veth = socket.if_nametoindex("ebl-in")
        assert veth != 1
        for packet in (R4(GW_PORT, 7), R6(GW_PORT, 7)):
            before = dataplane.counters()
            assert dataplane.run(packet, ingress_ifindex=veth) == (XDP_DROP, packet)
            assert counter_delta(before, dataplane.counters()) == {"rejected_NOT_LOOPBACK": 1}
        assert dataplane.gateways() == {}

        # the same datagram on lo, named explicitly, is accepted
        before = dataplane.counters()
        assert dataplane.run(R4(GW_PORT, 7), ingress_ifindex=1)[0] == XDP_DROP
        assert counter_delta(before, dataplane.counters()) == {"reg_accepted": 1}

        # service datagrams are balanced on any device (by the live list until the schedule is built)
        verdict, out = dataplane.run(P.udp4(P.SERVICE_PORT), ingress_ifindex=veth)
        assert (verdict, out) == (XDP_PASS, P.udp4(GW_PORT))


# ---------------------------------------------------------------- load-time configuration


def test_drop_without_gateway(pin_path: str, netns: NetNS) -> None:
    with netns.entered(), loaded(pin_path, default_config(drop_without_gateway=1)) as dataplane:
        packet = P.udp4(P.SERVICE_PORT)
        before = dataplane.counters()
        assert dataplane.run(packet)[0] == XDP_DROP
        assert counter_delta(before, dataplane.counters()) == {"no_gateway_dropped": 1}
        send_registrations(dataplane, [R4(GW_PORT, 1)])
        assert dataplane.run(packet) == (XDP_PASS, P.udp4(GW_PORT))


def test_userspace_registration_leaves_datagrams_to_the_stack(pin_path: str, netns: NetNS) -> None:
    with netns.entered(), loaded(pin_path, default_config(userspace_reg=1)) as dataplane:
        receivers = [socket.socket(family, socket.SOCK_DGRAM) for family in (socket.AF_INET, socket.AF_INET6)]
        try:
            receivers[1].setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for receiver, address in zip(receivers, ("0.0.0.0", "::")):
                receiver.bind((address, P.REG_PORT))  # as `ebpflb run -u` does
            for packet in (R4(GW_PORT, 7), R4(GW_PORT, 7, src="10.0.0.1"), R4(GW_PORT, 65536), R6(GW_PORT, 7)):
                before = dataplane.counters()
                assert dataplane.run(packet) == (XDP_PASS, packet)
                assert counter_delta(before, dataplane.counters()) == {}
            assert dataplane.gateways() == {}
        finally:
            for receiver in receivers:
                receiver.close()


def test_userspace_registration_without_a_receiver_is_taken_by_the_kernel(pin_path: str, netns: NetNS) -> None:
    """`run -u` was killed: nothing listens on the registration port, so heartbeats go on."""
    with netns.entered(), loaded(pin_path, default_config(userspace_reg=1)) as dataplane:
        for packet, gateways in ((R4(GW_PORT, 7), {GW_PORT: 7}), (R6(GW_PORT + 1, 2), {GW_PORT: 7, GW_PORT + 1: 2})):
            before = dataplane.counters()
            assert dataplane.run(packet)[0] == XDP_DROP
            assert counter_delta(before, dataplane.counters()) == {"reg_accepted": 1, "reg_in_kernel": 1}
            assert {port: weight for port, (_, weight) in dataplane.gateways().items()} == gateways


def test_other_ports_configured(pin_path: str, netns: NetNS) -> None:
    with netns.entered(), loaded(pin_path, default_config(service_port=9000, reg_port=9001)) as dataplane:
        registration = P.udp4(9001, P.weight_payload(4), sport=GW_PORT)
        assert dataplane.run(registration)[0] == XDP_DROP
        assert dataplane.gateways() == {GW_PORT: (0, 4)}
        for untouched in (P.udp4(P.SERVICE_PORT), R4(GW_PORT + 1, 4)):
            assert dataplane.run(untouched) == (XDP_PASS, untouched)
        assert dataplane.run(P.udp6(9000)) == (XDP_PASS, P.udp6(GW_PORT))
        assert dataplane.gateways() == {GW_PORT: (0, 4)}


# ---------------------------------------------------------------- the oracle itself


@pytest.mark.parametrize("case", [c for c in BALANCED if "fragment" not in c.description], ids=lambda c: c.description)
def test_expected_outputs_have_valid_checksums(case: Case) -> None:
    """Checks Scapy's from-scratch checksums with an independent RFC 1071 sum."""
    if P.udp_checksum(case.expected) == 0:
        return  # IPv4 without checksum
    sum_of = P.udp6_pseudo_sum if IPv6 in Ether(case.expected) else P.udp4_pseudo_sum
    assert sum_of(case.expected) == 0xFFFF


def test_checksum_edge_cases_are_what_they_claim() -> None:
    assert P.udp_checksum(zero_after_rewrite4(GW_PORT)) == P.udp_checksum(zero_after_rewrite6(GW_PORT)) == 0xFFFF
    assert P.udp_checksum(zero_after_rewrite4(P.SERVICE_PORT)) != 0xFFFF
    assert (
        P.udp_checksum(zero_before_rewrite4(P.SERVICE_PORT))
        == P.udp_checksum(zero_before_rewrite6(P.SERVICE_PORT))
        == 0xFFFF
    )
    for swapped in (False, True):
        carry = double_carry_checksum(P.SERVICE_PORT, GW_PORT, swapped)
        for family in (4, 6):
            assert P.udp_checksum(double_carry(family, swapped)(P.SERVICE_PORT)) == carry
