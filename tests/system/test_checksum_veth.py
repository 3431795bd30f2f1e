"""UDP checksum updates, checked where the kernel really verifies them: datagrams cross a veth
pair from a sender namespace whose veth has TX checksum offload off, so the receiving stack
checks every checksum in software after ebpflb rewrote the destination port. A wrong update
shows as UdpInCsumErrors / Udp6InCsumErrors; the negative control shows it would."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from ebpflb.dataplane import Instance

from ..netns import NetNS
from ..traffic import (
    SERVICE_PORT,
    SO_NO_CHECK,
    Capture,
    Gateway,
    cli_ok,
    drain_all,
    family,
    payload,
    payload_with_zero_checksum,
    raw_udp_socket,
    seq_of,
    status_json,
    udp_checksum,
    udp_segment,
    udp_sum,
    wait_until,
)

pytestmark = pytest.mark.kernel

SENDER_VETH, RECEIVER_VETH = "veth-snd", "veth-rcv"
# private addresses that exist only on this veth pair, inside the test's own namespaces
ADDRESSES: dict[int, tuple[str, str, str]] = {
    4: ("10.213.0.1", "10.213.0.2", "30"),
    6: ("fdeb:f1b0::1", "fdeb:f1b0::2", "126"),
}
SENDER_PORT = 40000
CSUM_COUNTERS = ["UdpInCsumErrors", "Udp6InCsumErrors"]
LOSS_COUNTERS = ["UdpNoPorts", "Udp6NoPorts", "UdpRcvbufErrors", "Udp6RcvbufErrors"]


@dataclass
class VethPair:
    sender: NetNS
    receiver: NetNS

    @staticmethod
    def source(version: int) -> str:
        return ADDRESSES[version][0]

    @staticmethod
    def target(version: int) -> str:
        return ADDRESSES[version][1]


def mac_of(ns: NetNS, ifname: str) -> str:
    return json.loads(ns.ip("-j", "link", "show", "dev", ifname))[0]["address"]


@pytest.fixture
def veth(netns_factory: Callable[[str], NetNS]) -> Iterator[VethPair]:
    """Sender and receiver namespaces joined by a veth pair; static neighbours, no DAD, and
    TX checksum offload off on the sender so checksums are complete on the wire."""
    sender, receiver = netns_factory("csnd"), netns_factory("crcv")
    sender.ip("link", "add", SENDER_VETH, "type", "veth", "peer", "name", RECEIVER_VETH, "netns", receiver.name)
    for ns, ifname, index in ((sender, SENDER_VETH, 0), (receiver, RECEIVER_VETH, 1)):
        for version, (a, b, prefix) in ADDRESSES.items():
            ns.ip("addr", "add", f"{(a, b)[index]}/{prefix}", "dev", ifname, *(["nodad"] if version == 6 else []))
        ns.ip("link", "set", ifname, "up")
    for ns, ifname, peer_ns, peer_if, index in (
        (sender, SENDER_VETH, receiver, RECEIVER_VETH, 1),
        (receiver, RECEIVER_VETH, sender, SENDER_VETH, 0),
    ):
        for addresses in ADDRESSES.values():
            ns.ip(
                "neigh",
                "replace",
                addresses[index],
                "lladdr",
                mac_of(peer_ns, peer_if),
                "dev",
                ifname,
                "nud",
                "permanent",
            )
    sender.run("ethtool", "-K", SENDER_VETH, "tx", "off", check=True)
    offload = sender.run("ethtool", "-k", SENDER_VETH, check=True).stdout
    assert "tx-checksumming: off" in offload
    yield VethPair(sender, receiver)


def dual_stack_gateways(count: int) -> list[Gateway]:
    """Gateways on [::] (IPv4 arrives mapped), so one port receives both families."""
    return [Gateway(6, host="::") for _ in range(count)]


def csum_and_loss_counters(ns: NetNS) -> dict[str, int]:
    return ns.nstat(CSUM_COUNTERS + LOSS_COUNTERS)


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_rewritten_checksums_verify_in_the_receiving_stack(veth: VethPair, pin_path: str, mode: str) -> None:
    rx, tx = veth.receiver, veth.sender
    cli_ok(rx, "load", RECEIVER_VETH, "--mode", mode, "--pin-path", pin_path)
    assert {"name": RECEIVER_VETH, "mode": mode} in status_json(rx, pin_path)["interfaces"]
    before = csum_and_loss_counters(rx)
    assert before == {name: 0 for name in before}

    sent: dict[int, bytes] = {}  # seq -> payload, for every datagram that must reach a gateway
    zero_checksum: set[int] = set()  # seqs sent over IPv4 with checksum 0, which must stay 0

    with rx.entered():
        gws = dual_stack_gateways(3)
        capture = Capture(RECEIVER_VETH)
    try:
        for gw, weight in zip(gws, (1, 2, 3)):
            gw.register(weight)
        with tx.entered():
            sockets = {v: socket.socket(family(v), socket.SOCK_DGRAM) for v in (4, 6)}
            no_check = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            raw4 = raw_udp_socket(4)
        try:
            no_check.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
            for v, sock in sockets.items():
                sock.bind((veth.source(v), SENDER_PORT))
            raw4.bind((veth.source(4), 0))
            seq = 0
            # kernel-computed checksums, odd and even lengths, both families
            for size in range(9, 209):
                for v, sock in sockets.items():
                    sent[seq] = payload(seq, size)
                    sock.sendto(sent[seq], (veth.target(v), SERVICE_PORT))
                    seq += 1
            # IPv4 without checksum, from a UDP socket and from a raw socket
            for size in range(9, 59):
                sent[seq] = payload(seq, size)
                no_check.sendto(sent[seq], (veth.target(4), SERVICE_PORT))
                zero_checksum.add(seq)
                seq += 1
                sent[seq] = payload(seq, size)
                raw4.sendto(udp_segment(SENDER_PORT + 1, SERVICE_PORT, sent[seq], 0), (veth.target(4), 0))
                zero_checksum.add(seq)
                seq += 1
            # a datagram whose checksum computes to 0 (sent as 0xffff) before the rewrite
            for v, sock in sockets.items():
                for size in (16, 17, 64):
                    sent[seq] = payload_with_zero_checksum(
                        v, veth.source(v), veth.target(v), SENDER_PORT, SERVICE_PORT, seq, size
                    )
                    sock.sendto(sent[seq], (veth.target(v), SERVICE_PORT))
                    seq += 1
            # ... and one whose checksum computes to 0 after it: with a single gateway the
            # rewritten port is known, so the payload can be chosen for it
            for gw in gws[1:]:
                gw.register(0)
            only = gws[0]
            assert wait_until(lambda: {g.port for g in Instance(pin_path).snapshot().gateways} == {only.port}, 2.0)
            edge_after: set[int] = set()
            for v, sock in sockets.items():
                for size in (16, 17, 64):
                    sent[seq] = payload_with_zero_checksum(
                        v, veth.source(v), veth.target(v), SENDER_PORT, only.port, seq, size
                    )
                    sock.sendto(sent[seq], (veth.target(v), SERVICE_PORT))
                    edge_after.add(seq)
                    seq += 1

            held = wait_until(lambda: drain_all(gws) >= 0 and sum(g.count for g in gws) >= len(sent), 5.0)
            time.sleep(0.05)
            drain_all(gws)
            capture.drain()
            after = csum_and_loss_counters(rx)
            assert after == before, f"the receiving stack rejected datagrams: {after}"
            assert held, f"gateways hold {sum(g.count for g in gws)} of {len(sent)} datagrams"

            # every datagram reached a gateway once, with its payload intact
            received = sorted((seq_of(p), p) for g in gws for p in g.received)
            assert received == sorted(sent.items())
            assert sum(g.count for g in gws[1:]) > 0 and gws[0].count > len(edge_after)

            # on the wire after XDP: every datagram rewritten, and its checksum field exactly
            # what a sender would compute for the new header (0 stays 0 over IPv4)
            ours = [u for u in capture.udp if u.src in (veth.source(4), veth.source(6))]
            assert len(ours) == len(sent)
            gateway_ports = {g.port for g in gws}
            for u in ours:
                s = seq_of(u.data)
                assert u.dport in gateway_ports, f"datagram {s} was not rewritten"
                expected = 0 if s in zero_checksum else udp_checksum(u.version, u.src, u.dst, u.segment)
                assert u.checksum == expected, f"datagram {s} (IPv{u.version}): {u.checksum:#06x} != {expected:#06x}"
            computed_zero = [u for u in ours if seq_of(u.data) in edge_after]
            assert len(computed_zero) == 6
            assert all(
                udp_sum(u.version, u.src, u.dst, u.segment) == 0xFFFF and u.checksum == 0xFFFF for u in computed_zero
            )

            counters = status_json(rx, pin_path)["counters"]
            assert counters["service"] == len(sent)
            assert counters["unbalanced"] == counters["no_gateway_passed"] == 0

            # Negative control: the same path with a deliberately wrong checksum must be
            # counted, so a wrong update by the kernel could not go unseen above.
            with tx.entered():
                raws = {v: raw_udp_socket(v) for v in (4, 6)}
            try:
                for v, raw in raws.items():
                    raw.bind((veth.source(v), 0))
                    for n in range(5):
                        data = payload(10_000 + n, 32)
                        segment = udp_segment(SENDER_PORT + 2, SERVICE_PORT, data)
                        good = udp_checksum(v, veth.source(v), veth.target(v), segment)
                        bad = good ^ 0x0101
                        raw.sendto(udp_segment(SENDER_PORT + 2, SERVICE_PORT, data, bad), (veth.target(v), 0))
            finally:
                for raw in raws.values():
                    raw.close()
            expected_errors = {"UdpInCsumErrors": 5, "Udp6InCsumErrors": 5}
            assert wait_until(lambda: rx.nstat(CSUM_COUNTERS) == expected_errors, 3.0), rx.nstat(CSUM_COUNTERS)
            time.sleep(0.02)
            assert drain_all(gws) == 0, "a datagram with a wrong checksum reached a gateway"
            assert status_json(rx, pin_path)["counters"]["service"] == len(sent) + 10  # they were balanced too
        finally:
            for sock in (*sockets.values(), no_check, raw4):
                sock.close()
    finally:
        capture.close()
        for gw in gws:
            gw.close()
