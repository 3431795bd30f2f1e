"""Checksums of NATed replies where a kernel really checks them: echo gateways behind ebpflb
answer clients in another namespace across a veth pair. With TX checksum offload off on
ebpflb's side the reply's checksum is complete on the wire and the client's stack verifies
it (UdpInCsumErrors / Udp6InCsumErrors stay 0, and a connected socket takes every reply). With
offload on the reply crosses as CHECKSUM_PARTIAL, which no stack verifies: its field must then
hold exactly the pseudo-header sum (what the stack put there), checked on a capture, and the
checksum the NIC would finish from it must be right."""

from __future__ import annotations

import select
import socket
import struct
from typing import Iterator

import pytest

from ..traffic import (
    SERVICE_PORT,
    Gateway,
    cli_ok,
    family,
    ones_complement_sum,
    parse_udp_frame,
    pseudo_header,
    status_json,
    udp_checksum,
    wait_until,
)
from .test_checksum_veth import RECEIVER_VETH, SENDER_VETH, VethPair
from .test_checksum_veth import veth as veth  # noqa: F401  (the fixture)

pytestmark = pytest.mark.kernel

SOL_PACKET, PACKET_AUXDATA, ETH_P_ALL = 263, 8, 0x0003
TP_STATUS_CSUMNOTREADY = 1 << 3
CSUM_COUNTERS = ["UdpInCsumErrors", "Udp6InCsumErrors", "UdpNoPorts", "Udp6NoPorts"]
SIZES = (0, 1, 2, 17, 64, 333, 1200)


class ReplyCapture:
    """UDP datagrams arriving on the client's veth from the service port, with the kernel's
    word on whether their checksum is complete (PACKET_AUXDATA)."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setblocking(False)

    def drain(self) -> list[tuple[int, str, str, bytes, bool]]:
        """(version, src, dst, UDP segment, checksum complete) of each reply from SERVICE_PORT."""
        out = []
        while True:
            try:
                frame, ancillary, _, _ = self.sock.recvmsg(65535, socket.CMSG_SPACE(32))
            except BlockingIOError:
                return out
            status = 0
            for level, kind, data in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status = struct.unpack_from("I", data)[0]
            udp = parse_udp_frame(frame)
            if udp and udp.sport == SERVICE_PORT:
                out.append((udp.version, udp.src, udp.dst, udp.segment, not status & TP_STATUS_CSUMNOTREADY))

    def close(self) -> None:
        self.sock.close()


def finished(segment: bytes) -> bytes:
    """The segment as a NIC finishes a CHECKSUM_PARTIAL one: the sum over the segment, whose
    check field holds the pseudo-header sum, complemented into that field."""
    total = ones_complement_sum(segment)
    check = (~total & 0xFFFF) or 0xFFFF
    return segment[:6] + struct.pack("!H", check) + segment[8:]


@pytest.fixture
def echo_behind_ebpflb(veth: VethPair, pin_path: str) -> Iterator[tuple[VethPair, list[Gateway]]]:  # noqa: F811
    cli_ok(veth.receiver, "load", RECEIVER_VETH, "--mode", "skb", "--pin-path", pin_path)
    with veth.receiver.entered():
        gws = [Gateway(6, host="::") for _ in range(3)]  # dual stack: one port, both families
    try:
        for gw, weight in zip(gws, (1, 2, 3)):
            gw.register(weight)
        assert wait_until(lambda: status_json(veth.receiver, pin_path)["gateways"] == 3, 2.0)
        yield veth, gws
    finally:
        for gw in gws:
            gw.close()


def exchange(pair: VethPair, gws: list[Gateway]) -> int:
    """Requests of each size from a connected socket per family; each gateway echoes what it
    gets to the sender; every reply must reach the connected socket. Returns replies taken."""
    with pair.sender.entered():
        clients = {v: socket.socket(family(v), socket.SOCK_DGRAM) for v in (4, 6)}
    taken = 0
    try:
        for v, client in clients.items():
            client.bind((pair.source(v), 0))
            client.connect((pair.target(v), SERVICE_PORT))
            client.settimeout(2)
            for size in SIZES:
                request = bytes((size + i) & 0xFF for i in range(size))
                client.send(request)
                ready, _, _ = select.select([gw.sock for gw in gws], [], [], 2)
                assert ready, f"request of {size} bytes reached no gateway"
                data, peer = ready[0].recvfrom(65535)
                assert data == request
                ready[0].sendto(data, peer)
                assert client.recv(65535) == request
                taken += 1
    finally:
        for client in clients.values():
            client.close()
    return taken


@pytest.mark.parametrize("offload", ["off", "on"])
def test_natted_replies_carry_right_checksums(echo_behind_ebpflb, offload: str) -> None:
    pair, gws = echo_behind_ebpflb
    pair.receiver.run("ethtool", "-K", RECEIVER_VETH, "tx", offload, check=True)
    assert f"tx-checksumming: {offload}" in pair.receiver.run("ethtool", "-k", RECEIVER_VETH, check=True).stdout
    before = pair.sender.nstat(CSUM_COUNTERS)
    with pair.sender.entered():
        capture = ReplyCapture(SENDER_VETH)
    try:
        taken = exchange(pair, gws)
        replies = capture.drain()
    finally:
        capture.close()
    assert taken == 2 * len(SIZES)
    assert pair.sender.nstat(CSUM_COUNTERS) == before  # none failed the client's check, none was dropped
    assert len(replies) == taken
    for version, src, dst, segment, complete in replies:
        assert complete == (offload == "off"), (offload, complete)
        field = struct.unpack_from("!H", segment, 6)[0]
        if complete:  # verified by the client's stack too; checked here as well
            assert field == udp_checksum(version, src, dst, segment)
        else:  # the field holds the pseudo-header sum only (the port is not in it), as the stack left it
            assert field == ones_complement_sum(pseudo_header(version, src, dst, len(segment)))
            done = finished(segment)
            assert struct.unpack_from("!H", done, 6)[0] == udp_checksum(version, src, dst, segment)
