"""Ethernet/IPv4/UDP frames for BPF_PROG_TEST_RUN, with valid IPv4 and UDP checksums."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_HEADER = 14
IPV4_HEADER = 20
UDP_HEADER = 8
UDP_OFFSET = ETH_HEADER + IPV4_HEADER
LOOPBACK = bytes([127, 0, 0, 1])


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~ones_complement_sum(data) & 0xFFFF


@dataclass(frozen=True)
class UdpFields:
    source: int
    dest: int
    length: int
    check: int


def udp4_frame(
    source_port: int,
    dest_port: int,
    payload: bytes,
    source: bytes = LOOPBACK,
    dest: bytes = LOOPBACK,
    source_mac: bytes = bytes([2, 0, 0, 0, 0, 1]),
    dest_mac: bytes = bytes(6),
) -> bytes:
    """A frame from source:source_port to dest:dest_port (IPv4 addresses as 4 bytes; loopback
    by default, as BPF_PROG_TEST_RUN on lo sees them)."""
    udp_length = UDP_HEADER + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, IPV4_HEADER + udp_length, 0, 0, 64, 17, 0, source, dest)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    pseudo = source + dest + struct.pack("!BBH", 0, 17, udp_length)
    udp = struct.pack("!HHHH", source_port, dest_port, udp_length, 0) + payload
    check = checksum(pseudo + udp) or 0xFFFF  # a computed 0 is sent as 0xffff
    udp = udp[:6] + struct.pack("!H", check) + udp[8:]
    ethernet = dest_mac + source_mac + struct.pack("!H", 0x0800)
    return ethernet + ip + udp


def udp_fields(frame: bytes) -> UdpFields:
    return UdpFields(*struct.unpack_from("!HHHH", frame, UDP_OFFSET))


def udp4_checksum_ok(frame: bytes) -> bool:
    """True when the UDP checksum of an udp4_frame() (possibly rewritten) verifies."""
    fields = udp_fields(frame)
    udp = frame[UDP_OFFSET : UDP_OFFSET + fields.length]
    src, dst = frame[ETH_HEADER + 12 : ETH_HEADER + 16], frame[ETH_HEADER + 16 : ETH_HEADER + 20]
    pseudo = src + dst + struct.pack("!BBH", 0, 17, fields.length)
    return ones_complement_sum(pseudo + udp) == 0xFFFF


def registration_frame(gateway_port: int, reg_port: int, weight: int) -> bytes:
    """What a gateway sends to register: 4 payload bytes, the weight as u32 big-endian."""
    return udp4_frame(gateway_port, reg_port, struct.pack("!I", weight))
