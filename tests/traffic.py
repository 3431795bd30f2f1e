"""Real-socket traffic for system tests: gateways that register and count what they receive,
senders of numbered datagrams, UDP checksums, and waits with deadlines.

Run as `python -m tests.traffic stream ...` it is a sender process that streams datagrams at a
steady rate and prints how many it sent (used while the main test thread churns gateways).

Over 300 lines: the one toolbox of real-socket helpers (gateways, senders, checksums,
capture) that every system test shares; one place, not copies."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Sequence, TypeVar

if TYPE_CHECKING:
    from .netns import NetNS

SERVICE_PORT = 2152
REG_PORT = 3000
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
SO_RCVBUFFORCE = 33  # root may exceed rmem_max: a burst must never overflow a gateway's queue
SO_NO_CHECK = 11  # IPv4 only: send UDP with checksum 0 ("none")
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
RCVBUF_BYTES = 8 << 20
SEQ = struct.Struct("!Q")
T = TypeVar("T")


def family(version: int) -> socket.AddressFamily:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def payload(seq: int, size: int = 24) -> bytes:
    """A datagram body that names itself: 8-byte sequence number, then a pattern derived from it."""
    body = SEQ.pack(seq)
    pattern = bytes((seq + i) & 0xFF for i in range(max(0, size - len(body))))
    return body + pattern


def seq_of(data: bytes) -> int:
    return SEQ.unpack_from(data)[0]


class Gateway:
    """A UDP socket on an ephemeral loopback port that registers from itself and keeps every
    payload it receives, in arrival order."""

    def __init__(self, version: int = 4, host: Optional[str] = None, port: int = 0) -> None:
        self.version = version
        self.sock = socket.socket(family(version), socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        self.sock.bind((host or LOOPBACK[version], port))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.closed = False

    def register(self, weight: int, reg_port: int = REG_PORT) -> None:
        """Registration, heartbeat or (weight 0) removal: the weight as u32 big-endian."""
        self.sock.sendto(struct.pack("!I", weight), (LOOPBACK[self.version], reg_port))

    def drain(self) -> int:
        """Reads whatever is queued without blocking; returns how many datagrams that was."""
        if self.closed:
            return 0
        n = 0
        while True:
            try:
                self.received.append(self.sock.recv(65535))
            except BlockingIOError:
                return n
            n += 1

    @property
    def count(self) -> int:
        return len(self.received)

    def close(self) -> None:
        if not self.closed:
            self.drain()
            self.sock.close()
            self.closed = True

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def gateways(count: int, version: int = 4) -> Iterator[list[Gateway]]:
    """Opens `count` gateway sockets (in the calling thread's namespace); closes them after."""
    made: list[Gateway] = []
    try:
        for _ in range(count):
            made.append(Gateway(version))
        yield made
    finally:
        for gw in made:
            gw.close()


def drain_all(gws: Iterable[Gateway]) -> int:
    return sum(gw.drain() for gw in gws)


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.01) -> T:
    """Polls until condition() is truthy and returns it, or its last falsy value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_for_total(gws: Sequence[Gateway], total: int, timeout: float = 5.0) -> int:
    """Drains until the gateways together hold `total` datagrams (or the deadline); then drains
    once more after a short pause so a surplus would be seen too. Returns the total held."""
    wait_until(lambda: drain_all(gws) >= 0 and sum(g.count for g in gws) >= total, timeout)
    time.sleep(0.02)
    drain_all(gws)
    return sum(g.count for g in gws)


@contextlib.contextmanager
def pinned_to_cpu(cpu: int = 0) -> Iterator[None]:
    """Pins the calling thread to one CPU: datagrams it sends over lo (or veth) are then
    processed by XDP on that CPU, so one per-CPU scheduler cursor sees all of them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Sender:
    """Sends numbered datagrams to one address from one socket; `no_check` sends IPv4 UDP
    with checksum 0."""

    def __init__(self, version: int, host: str, port: int = SERVICE_PORT, no_check: bool = False) -> None:
        self.sock = socket.socket(family(version), socket.SOCK_DGRAM)
        if no_check:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        self.target = (host, port)
        self.next_seq = 0
        self.sent: list[bytes] = []

    def send(self, count: int, size: int = 24, cpu: Optional[int] = 0) -> list[bytes]:
        """Sends `count` datagrams, pinned to `cpu` unless it is None; returns their payloads."""
        batch = [payload(self.next_seq + i, size) for i in range(count)]
        self.next_seq += count
        with pinned_to_cpu(cpu) if cpu is not None else contextlib.nullcontext():
            for data in batch:
                self.sock.sendto(data, self.target)
        self.sent.extend(batch)
        return batch

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the CLI, as tests read it


def cli_ok(ns: "NetNS", *args: str) -> str:
    """Runs the real CLI in the namespace and insists on success; returns its stdout."""
    result = ns.ebpflb(*args)
    assert result.returncode == 0, f"ebpflb {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
    return result.stdout


def gateways_json(ns: "NetNS", pin_path: str) -> dict[int, dict]:
    """`ebpflb gateways --json`, keyed by port."""
    return {row["port"]: row for row in json.loads(cli_ok(ns, "gateways", "--json", "--pin-path", pin_path))}


def status_json(ns: "NetNS", pin_path: str) -> dict:
    return json.loads(cli_ok(ns, "status", "--json", "--pin-path", pin_path))


def weights_in_slot_order(rows: dict[int, dict]) -> list[int]:
    """The weights as the scheduler sees them: indexed by slot, 0 for a free slot."""
    weights = [0] * (max((r["slot"] for r in rows.values()), default=-1) + 1)
    for row in rows.values():
        weights[row["slot"]] = row["weight"]
    return weights


# ---------------------------------------------------------------- checksums


def ones_complement_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of data (odd length padded with a zero byte)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(version: int, src: str, dst: str, udp_length: int) -> bytes:
    fam = family(version)
    addresses = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst)
    if version == 4:
        return addresses + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    return addresses + struct.pack("!IxxxB", udp_length, socket.IPPROTO_UDP)


def udp_sum(version: int, src: str, dst: str, udp_segment: bytes) -> int:
    """One's complement sum of pseudo header and segment, its checksum field taken as 0."""
    zeroed = udp_segment[:6] + b"\0\0" + udp_segment[8:]
    return ones_complement_sum(pseudo_header(version, src, dst, len(udp_segment)) + zeroed)


def udp_checksum(version: int, src: str, dst: str, udp_segment: bytes) -> int:
    """The checksum field a sender computes for udp_segment (whose own checksum field is
    ignored): a computed 0 is sent as 0xffff."""
    return (~udp_sum(version, src, dst, udp_segment) & 0xFFFF) or 0xFFFF


def payload_with_zero_checksum(version: int, src: str, dst: str, sport: int, dport: int, seq: int, size: int) -> bytes:
    """A payload whose datagram from sport to dport has a computed checksum of 0 (sent as
    0xffff, the value an incremental update most easily gets wrong): two bytes after the
    sequence number are chosen to make the one's complement sum 0xffff."""
    body = bytearray(payload(seq, size))
    body[8:10] = b"\0\0"
    partial = udp_sum(version, src, dst, udp_segment(sport, dport, bytes(body)))
    body[8:10] = struct.pack("!H", 0xFFFF - partial)
    return bytes(body)


def udp_segment(sport: int, dport: int, data: bytes, checksum: int = 0) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), checksum) + data


def raw_udp_socket(version: int) -> socket.socket:
    """A raw socket that sends a UDP header and payload as given: the kernel adds the IP
    header and computes no UDP checksum, so the test chooses it (right, zero or wrong)."""
    return socket.socket(family(version), socket.SOCK_RAW, socket.IPPROTO_UDP)


@dataclass
class CapturedUdp:
    version: int
    src: str
    dst: str
    segment: bytes  # UDP header and payload, as the stack received them

    @property
    def sport(self) -> int:
        return struct.unpack_from("!H", self.segment, 0)[0]

    @property
    def dport(self) -> int:
        return struct.unpack_from("!H", self.segment, 2)[0]

    @property
    def checksum(self) -> int:
        return struct.unpack_from("!H", self.segment, 6)[0]

    @property
    def data(self) -> bytes:
        return self.segment[8:]


class Capture:
    """Every UDP datagram arriving on one interface, as the stack sees it: an AF_PACKET tap
    runs after XDP, so it shows the rewritten headers (open it inside the namespace)."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setblocking(False)
        self.udp: list[CapturedUdp] = []

    def drain(self) -> None:
        while True:
            try:
                frame, address = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if address[2] != PACKET_OUTGOING:
                parsed = parse_udp_frame(frame)
                if parsed:
                    self.udp.append(parsed)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_udp_frame(frame: bytes) -> Optional[CapturedUdp]:
    """The UDP datagram in an Ethernet frame (IPv4 or IPv6 without extension headers)."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0800 and ip[9] == socket.IPPROTO_UDP:
        header = (ip[0] & 0x0F) * 4
        udp_length = struct.unpack_from("!H", ip, header + 4)[0]
        src, dst = (socket.inet_ntop(socket.AF_INET, ip[o : o + 4]) for o in (12, 16))
        return CapturedUdp(4, src, dst, ip[header : header + udp_length])
    if ethertype == 0x86DD and ip[6] == socket.IPPROTO_UDP:
        udp_length = struct.unpack_from("!H", ip, 40 + 4)[0]
        src, dst = (socket.inet_ntop(socket.AF_INET6, ip[o : o + 16]) for o in (8, 24))
        return CapturedUdp(6, src, dst, ip[40 : 40 + udp_length])
    return None


# ---------------------------------------------------------------- streaming sender process


def stream(version: int, host: str, port: int, count: int, rate: float, size: int) -> int:
    """Sends `count` numbered datagrams at about `rate` per second; returns how many were sent."""
    sock = socket.socket(family(version), socket.SOCK_DGRAM)
    start = time.monotonic()
    for seq in range(count):
        due = start + seq / rate
        delay = due - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)
        sock.sendto(payload(seq, size), (host, port))
    sock.close()
    return count


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.traffic")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stream", help="stream numbered datagrams at a steady rate")
    s.add_argument("--version", type=int, choices=(4, 6), default=4)
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=SERVICE_PORT)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--size", type=int, default=24)
    args = parser.parse_args(argv)
    sent = stream(args.version, args.host or LOOPBACK[args.version], args.port, args.count, args.rate, args.size)
    print(sent, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
