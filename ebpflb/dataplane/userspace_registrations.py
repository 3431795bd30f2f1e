"""User-space registrations (`run -u`): the XDP program passes registration datagrams up the
stack, and this server hands each one to the kernel's control program (CTL_REGISTER), which
validates, applies and counts it with the same code as the in-kernel path."""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
from dataclasses import dataclass
from typing import Optional

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlArgs, CtlOp, RejectReason
from ebpflb.errors import EbpflbError

# Linux values; the socket module lacks some of them on older Pythons.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
MAX_DATAGRAM = 65536
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF_BYTES = 4 << 20  # a burst of registrations (256 gateways starting at once) must not overflow
ANCILLARY_BYTES = socket.CMSG_SPACE(32)
WEIGHT = struct.Struct("!I")


@dataclass
class Registration:
    """One received datagram, as the XDP path would see it."""

    family: int  # 4 or 6
    source: str
    port: int
    ifindex: int
    payload: bytes

    def control_args(self) -> CtlArgs:
        """The CTL_REGISTER request: weight from bytes 0-3 (0 if shorter; the kernel then rejects
        it as short), the source address in network byte order with IPv4 in addr[0]."""
        weight = WEIGHT.unpack_from(self.payload)[0] if len(self.payload) >= WEIGHT.size else 0
        args = CtlArgs(
            op=CtlOp.REGISTER,
            weight=weight,
            port=self.port,
            family=self.family,
            ifindex=self.ifindex,
            payload_len=len(self.payload),
        )
        raw = socket.inet_pton(socket.AF_INET if self.family == 4 else socket.AF_INET6, self.source)
        ctypes.memmove(ctypes.addressof(args.addr), raw, len(raw))
        return args


def arrival_ifindex(family: int, ancillary: list[tuple[int, int, bytes]]) -> int:
    """The receiving device from IP_PKTINFO (struct in_pktinfo: ifindex first) or
    IPV6_PKTINFO (struct in6_pktinfo: 16-byte address, then ifindex); 0 if missing."""
    for level, kind, data in ancillary:
        if family == 4 and level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 4:
            return struct.unpack_from("=i", data)[0]
        if family == 6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            return struct.unpack_from("=i", data, 16)[0]
    return 0


class RegistrationServer:
    """Listens on the registration port on every address of the namespace, IPv4 and IPv6."""

    def __init__(self, reg_port: int) -> None:
        self.sockets: list[tuple[int, socket.socket]] = []
        try:
            self.sockets.append((4, self._open(socket.AF_INET, reg_port)))
            self.sockets.append((6, self._open(socket.AF_INET6, reg_port)))
        except OSError as e:
            self.close()
            raise EbpflbError(
                f"cannot listen for registrations on UDP port {reg_port}: {e.strerror} "
                "(is another program bound to it? choose another --reg-port)"
            ) from None

    @staticmethod
    def _open(family: socket.AddressFamily, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)  # capped by rmem_max
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                sock.bind(("::", port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.bind(("0.0.0.0", port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def fileno_map(self) -> dict[int, int]:
        """Socket fd -> address family (4 or 6), for a selector."""
        return {sock.fileno(): family for family, sock in self.sockets}

    def receive(self, family: int) -> list[Registration]:
        """Every datagram queued on the socket of that family, without blocking."""
        sock = next(s for f, s in self.sockets if f == family)
        got: list[Registration] = []
        while True:
            try:
                data, ancillary, _flags, address = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                return got
            source = address[0].split("%")[0]  # an IPv6 link-local source carries its scope
            got.append(Registration(family, source, address[1], arrival_ifindex(family, ancillary), data))

    def close(self) -> None:
        for _, sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []


def apply(control_fd: int, registration: Registration) -> Optional[RejectReason]:
    """Runs CTL_REGISTER; the kernel counts the outcome. Returns the rejection reason, if any."""
    ret = libbpf.run_syscall(control_fd, registration.control_args())
    if ret >= 0:
        return None
    try:
        return RejectReason(-ret - 1)
    except ValueError:
        return RejectReason.BAD_REQUEST
