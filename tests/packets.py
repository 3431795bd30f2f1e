"""Packet builders for the dataplane tests, with Scapy.

Every builder takes the destination port as its first argument and computes the UDP
checksum from scratch (unless told otherwise), so the packet the balancer should output is
the same builder called with the gateway's port: never derived from the input bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

SERVICE_PORT = 2152
REG_PORT = 3000
CLIENT_PORT = 40000
LOOPBACK4 = "127.0.0.1"
LOOPBACK6 = "::1"
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

PortBuilder = Callable[[int], bytes]


def ethernet(vlans: Sequence[tuple[int, int]] = ()) -> Packet:
    """Ethernet header with VLAN tags (tpid, vid), outermost first."""
    frame: Packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for tpid, vid in vlans:
        frame = frame / (Dot1AD(vlan=vid) if tpid == ETH_P_8021AD else Dot1Q(vlan=vid))
    return frame


def ipv4(src: str = LOOPBACK4, dst: str = LOOPBACK4, **fields: Any) -> Packet:
    return IP(src=src, dst=dst, id=0x1234, ttl=64, **fields)


def ipv6(src: str = LOOPBACK6, dst: str = LOOPBACK6, **fields: Any) -> Packet:
    return IPv6(src=src, dst=dst, hlim=64, **fields)


def udp(dport: int, payload: bytes, sport: int = CLIENT_PORT, chksum: Optional[int] = None) -> Packet:
    """UDP with payload; chksum None means Scapy computes it from scratch."""
    return UDP(sport=sport, dport=dport, chksum=chksum) / Raw(payload)


def udp4(
    dport: int,
    payload: bytes = b"service datagram",
    *,
    sport: int = CLIENT_PORT,
    src: str = LOOPBACK4,
    options: Sequence[object] = (),
    vlans: Sequence[tuple[int, int]] = (),
    chksum: Optional[int] = None,
    dont_fragment: bool = False,
) -> bytes:
    fields: dict[str, Any] = {"flags": "DF"} if dont_fragment else {}
    if options:
        fields["options"] = list(options)
    return bytes(ethernet(vlans) / ipv4(src, **fields) / udp(dport, payload, sport, chksum))


def udp6(
    dport: int,
    payload: bytes = b"service datagram",
    *,
    sport: int = CLIENT_PORT,
    src: str = LOOPBACK6,
    ext: Sequence[Packet] = (),
    vlans: Sequence[tuple[int, int]] = (),
    chksum: Optional[int] = None,
) -> bytes:
    stack: Packet = ipv6(src)
    for header in ext:
        stack = stack / header.copy()
    return bytes(ethernet(vlans) / stack / udp(dport, payload, sport, chksum))


def hop_by_hop() -> Packet:
    return IPv6ExtHdrHopByHop()


def routing(addresses: Sequence[str] = ("::1",)) -> Packet:
    # segleft 0: the pseudo-header uses the IPv6 destination, as for the final hop
    return IPv6ExtHdrRouting(addresses=list(addresses), segleft=0)


def dest_opts() -> Packet:
    return IPv6ExtHdrDestOpt()


def fragments4(dport: int, payload: bytes, fragsize: int = 200, sport: int = CLIENT_PORT) -> list[bytes]:
    """An IPv4 UDP datagram split by Scapy; the checksum covers the whole datagram."""
    whole = ipv4() / udp(dport, payload, sport)
    return [bytes(ethernet() / piece) for piece in fragment(whole, fragsize=fragsize)]


def fragments6(dport: int, payload: bytes, fragsize: int = 280, sport: int = CLIENT_PORT) -> list[bytes]:
    """An IPv6 UDP datagram with a fragment header, split by Scapy."""
    whole = ipv6() / IPv6ExtHdrFragment(id=0xBEEF) / udp(dport, payload, sport)
    return [bytes(ethernet() / piece) for piece in fragment6(whole, fragsize)]


def tcp4(dport: int) -> bytes:
    return bytes(ethernet() / ipv4() / TCP(sport=CLIENT_PORT, dport=dport, flags="S"))


def icmp4() -> bytes:
    return bytes(ethernet() / ipv4() / ICMP() / Raw(b"ping"))


def icmp6() -> bytes:
    return bytes(ethernet() / ipv6() / ICMPv6EchoRequest(data=b"ping"))


def ah4(dport: int) -> bytes:
    """IPv4 + AH + UDP: the UDP header sits behind AH, which the balancer does not walk."""
    return bytes(ethernet() / ipv4() / AH(nh=17, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12) / udp(dport, b"x"))


def ah6(dport: int) -> bytes:
    return bytes(ethernet() / ipv6() / AH(nh=17, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12) / udp(dport, b"x"))


def esp4() -> bytes:
    return bytes(ethernet() / ipv4() / ESP(spi=1, seq=1, data=b"\0" * 32))


def esp6() -> bytes:
    return bytes(ethernet() / ipv6() / ESP(spi=1, seq=1, data=b"\0" * 32))


def weight_payload(weight: int, extra: bytes = b"") -> bytes:
    """A registration payload: the weight as u32 big-endian, then anything."""
    return weight.to_bytes(4, "big") + extra


def registration4(port: int, weight: int, *, src: str = LOOPBACK4, extra: bytes = b"", **fields: object) -> bytes:
    return udp4(REG_PORT, weight_payload(weight, extra), sport=port, src=src, **fields)  # type: ignore[arg-type]


def registration6(
    port: int, weight: int, *, src: str = LOOPBACK6, extra: bytes = b"", chksum: Optional[int] = None
) -> bytes:
    return udp6(REG_PORT, weight_payload(weight, extra), sport=port, src=src, chksum=chksum)


def with_udp_length(packet: bytes, length: int) -> bytes:
    """The packet with its UDP length field overwritten (checksum left as it was)."""
    frame = Ether(packet)
    frame[UDP].len = length
    return bytes(frame)


def udp_checksum(packet: bytes) -> int:
    return int(Ether(packet)[UDP].chksum)


def udp_length(packet: bytes) -> int:
    return int(Ether(packet)[UDP].len)


def udp_dport(packet: bytes) -> int:
    return int(Ether(packet)[UDP].dport)


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 sum of 16-bit big-endian words, folded; independent of Scapy."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp4_pseudo_sum(packet: bytes) -> int:
    """Sum over the IPv4 pseudo-header and the whole UDP datagram; 0xffff when the checksum
    field holds the correct value (or 0, for a datagram without checksum)."""
    ip = Ether(packet)[IP]
    segment = bytes(ip[UDP])
    pseudo = bytes(ip)[12:20] + bytes([0, 17]) + len(segment).to_bytes(2, "big")
    return ones_complement_sum(pseudo + segment)


def udp6_pseudo_sum(packet: bytes) -> int:
    ip = Ether(packet)[IPv6]
    segment = bytes(ip[UDP])
    pseudo = bytes(ip)[8:40] + len(segment).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    return ones_complement_sum(pseudo + segment)


def payload_for_checksum(build: Callable[[bytes], bytes], target: int, filler: bytes = b"!zero!") -> bytes:
    """A payload (one free 16-bit word, then filler) for which Scapy, computing from scratch,
    writes `target` into the checksum field (0xffff is what it writes for a computed 0).

    The free word X enters the one's complement sum S once: checksum(X) = ~(S + X), so
    X = checksum(0) + ~target solves it; both representations of that sum are tried and the
    answer is confirmed by Scapy, so a wrong derivation fails here rather than in a test."""
    base = udp_checksum(build(b"\0\0" + filler))
    folded = ones_complement_sum((base).to_bytes(2, "big") + (~target & 0xFFFF).to_bytes(2, "big"))
    for candidate in {folded, folded % 0xFFFF}:
        payload = candidate.to_bytes(2, "big") + filler
        if udp_checksum(build(payload)) == target:
            return payload
    raise AssertionError(f"no payload gives UDP checksum {target:#06x}")
