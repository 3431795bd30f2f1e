"""Make any Python UDP daemon an ebpflb gateway: register, heartbeat, change weight, deregister.

A gateway is a UDP socket on a local port. It registers by sending, *from that socket*, a
datagram to the registration port (default 3000) on 127.0.0.1 or ::1 whose first 4 payload
bytes are its weight (u32 big-endian, 1-65535); the source port of that datagram is the port
ebpflb sends service datagrams to. Sending it again is a heartbeat (and may change the
weight); weight 0 removes the gateway at once. Datagrams the balancer rewrote just before
the removal may still be on their way to the socket: keep the socket open and read it for a
grace period (DEREGISTER_GRACE_S, 0.1 s; `close()` does this) before closing it, and nothing
is lost. A gateway not heard from for the expiry time
(`ebpflb load -e S`, default 30 s) is removed, so the heartbeat interval (default 1 s) must be
well below it: a few missed heartbeats must not expire a healthy gateway.

    with Gateway(port=7001, weight=3) as gw:   # binds 127.0.0.1:7001, registers, heartbeats
        while True:
            data, peer = gw.sock.recvfrom(65535)
            ...                                  # gw.weight = 5 re-weights at once

`Gateway(sock=my_socket)` uses a socket you created and bound yourself (it is not closed by
the helper). The socket must be bound to a loopback or wildcard address, so that its
registrations leave from a loopback source, which is all ebpflb accepts.
"""

from __future__ import annotations

import atexit
import logging
import socket
import struct
import threading
import time
from typing import Optional

from ebpflb.bpf import defaults, layout  # constants only: no libbpf, Typer or rich

MAX_WEIGHT = layout.MAX_WEIGHT
DEFAULT_REG_PORT = defaults.REG_PORT
DEFAULT_INTERVAL_S = 1.0
DEREGISTER_GRACE_S = 0.1  # far longer than a datagram takes from the XDP program to the socket
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}

log = logging.getLogger("ebpflb.gateway")


def registration_payload(weight: int) -> bytes:
    """The registration datagram's payload: the weight, u32 big-endian (0 deregisters)."""
    check_weight(weight)
    return struct.pack("!I", weight)


def check_weight(weight: int) -> None:
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be an integer 0-{MAX_WEIGHT} (0 takes the gateway out), not {weight!r}")


def _family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_loopback_or_wildcard(family: int, address: str) -> bool:
    if family == socket.AF_INET:
        return address == "0.0.0.0" or address.startswith("127.")
    return address in ("::", "::1") or address.startswith("::ffff:127.")


class Gateway:
    """One registered gateway: a bound UDP socket plus a heartbeat thread.

    Arguments:
      port: UDP port to bind when the helper creates the socket (0 picks a free port).
      weight: 1-65535; 0 keeps the gateway out of rotation until a weight is set.
      sock: a bound UDP socket of yours to register instead of creating one.
      host: address to bind the created socket to (default 127.0.0.1; "::1" or "::" for IPv6;
        "0.0.0.0" or "::" to also receive datagrams addressed to other local addresses).
      reg_host: where registrations go (default the loopback address of the socket's family).
      reg_port: ebpflb's registration port (`ebpflb load --reg-port`, default 3000).
      interval: seconds between heartbeats; keep it well below the expiry time (`-e`).
      start: register and start heartbeating now (else call `start()`).
    """

    def __init__(
        self,
        port: int = 0,
        weight: int = 1,
        *,
        sock: Optional[socket.socket] = None,
        host: str = "127.0.0.1",
        reg_host: Optional[str] = None,
        reg_port: int = DEFAULT_REG_PORT,
        interval: float = DEFAULT_INTERVAL_S,
        start: bool = True,
    ) -> None:
        check_weight(weight)
        if not 1 <= reg_port <= 65535:
            raise ValueError(f"reg_port must be 1-65535, not {reg_port}")
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self._owns_socket = sock is None
        if sock is None:
            sock = socket.socket(_family_of(host), socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
        elif sock.type != socket.SOCK_DGRAM or sock.family not in LOOPBACK:
            raise ValueError("sock must be an AF_INET or AF_INET6 UDP (SOCK_DGRAM) socket")
        bound = sock.getsockname()
        if bound[1] == 0:
            raise ValueError("sock must be bound to its port before it can register (sock.bind((host, port)))")
        if not _is_loopback_or_wildcard(sock.family, bound[0]):
            raise ValueError(
                f"sock is bound to {bound[0]}: registrations must leave from a loopback source, "
                f"so bind to {LOOPBACK[sock.family]} or {WILDCARD[sock.family]}"
            )
        self.sock: socket.socket = sock
        self.port: int = bound[1]
        self.reg_address = (reg_host or LOOPBACK[sock.family], reg_port)
        self.interval = interval
        self._weight = weight
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.heartbeats_sent = 0
        if start:
            self.start()

    # ---------------------------------------------------------------- weight

    @property
    def weight(self) -> int:
        return self._weight

    @weight.setter
    def weight(self, value: int) -> None:
        """Sets the weight and sends a heartbeat carrying it at once (0 takes the gateway out)."""
        check_weight(value)
        self._weight = value
        if self.running:
            self.heartbeat()

    # ---------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Gateway":
        """Registers now and heartbeats every `interval` seconds in a background thread."""
        if self._closed:
            raise RuntimeError("this gateway is closed")
        if self.running:
            return self
        self._stop.clear()
        self.heartbeat()
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"ebpflb-gateway-{self.port}", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        return self

    def heartbeat(self) -> None:
        """Sends one registration with the current weight, from the gateway's own socket."""
        with self._send_lock:
            self.sock.sendto(registration_payload(self._weight), self.reg_address)
            self.heartbeats_sent += 1

    def deregister(self) -> None:
        """Sends weight 0: ebpflb removes the gateway at once. Heartbeats go on unless stopped."""
        with self._send_lock:
            self.sock.sendto(registration_payload(0), self.reg_address)

    def stop(self, deregister: bool = True) -> None:
        """Stops heartbeating; with deregister=False the gateway stays until it expires."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        atexit.unregister(self.close)
        if deregister and self.sock.fileno() != -1:
            try:
                self.deregister()
            except OSError as e:
                log.warning("gateway %d: could not deregister: %s", self.port, e)

    def close(self, grace: float = DEREGISTER_GRACE_S) -> None:
        """Deregisters, stops heartbeating, waits `grace` seconds (keep reading the socket
        meanwhile: datagrams already on their way still arrive), then closes the socket if the
        helper created it."""
        if self._closed:
            return
        self.stop(deregister=True)
        self._closed = True
        if self._owns_socket:
            if grace > 0:
                time.sleep(grace)
            self.sock.close()

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "heartbeating" if self.running else "closed" if self._closed else "stopped"
        return f"Gateway(port={self.port}, weight={self._weight}, {state})"

    # ---------------------------------------------------------------- heartbeat thread

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.heartbeat()
            except OSError as e:
                if self.sock.fileno() == -1:
                    return  # the owner closed the socket: nothing left to register
                # a transient failure (e.g. ENOBUFS) must not end the heartbeats
                log.warning("gateway %d: heartbeat failed: %s", self.port, e)

