#!/usr/bin/env python3
"""An ebpflb gateway whose weight follows its own capacity.

Every period it measures how long handling one datagram took on average and sets its weight
to the rate it could sustain (datagrams per second / 10), so a gateway that gets slower
receives less traffic. A receive queue filling past half of the socket buffer halves the
weight at once: the gateway is falling behind, whatever the average says.

    sudo ebpflb load lo
    python3 examples/adaptive_gateway.py 7001 --work-ms 1    # settles near weight 100
    python3 examples/adaptive_gateway.py 7002 --work-ms 2    # settles near weight 50
    # send to port 2152: 7001 gets about two thirds of the datagrams

Weights are rounded coarsely and only re-sent when they move by more than 10%: small weights
keep the kernel's schedule one exact cycle (sum / gcd <= 4096) and avoid needless rebuilds.
"""

import argparse
import signal
import socket
import struct
import time

from ebpflb.gateway import Gateway

SO_MEMINFO = 55  # Linux: the socket's memory counters, u32 each; [0] receive queue, [1] buffer size
MEMINFO = struct.Struct("=9I")
WEIGHT_PER_DATAGRAM_PER_S = 0.1


def backlog_fraction(sock: socket.socket) -> float:
    """How full the receive queue is, 0.0-1.0."""
    queued, buffer_size = MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size))[:2]
    return queued / buffer_size if buffer_size else 0.0


def weight_for(handled: int, busy_s: float, backlog: float, current: int) -> int:
    if handled == 0:
        return current  # no traffic, no news: keep the weight
    capacity_per_s = handled / busy_s if busy_s > 0 else 65535 / WEIGHT_PER_DATAGRAM_PER_S
    weight = max(1, min(65535, round(capacity_per_s * WEIGHT_PER_DATAGRAM_PER_S)))
    if backlog > 0.5:
        weight = max(1, min(weight, current) // 2)
    return weight


def handle(data: bytes, work_s: float) -> None:
    """Stands for the real work of the daemon."""
    time.sleep(work_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int, help="UDP port to receive service datagrams on")
    parser.add_argument("--weight", type=int, default=100, help="weight until the first measurement (default 100)")
    parser.add_argument("--work-ms", type=float, default=1.0, help="simulated work per datagram (default 1 ms)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between weight updates (default 1)")
    args = parser.parse_args()
    # `kill` (SIGTERM) leaves like Ctrl-C does: through the `with` block, which deregisters
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    with Gateway(port=args.port, weight=args.weight) as gw:
        print(f"gateway on port {gw.port} registered with weight {gw.weight}", flush=True)
        gw.sock.settimeout(0.05)
        handled, busy_s, next_update = 0, 0.0, time.monotonic() + args.period
        try:
            while True:
                try:
                    data = gw.sock.recv(65535)
                    started = time.monotonic()
                    handle(data, args.work_ms / 1000)
                    busy_s += time.monotonic() - started
                    handled += 1
                except socket.timeout:
                    pass
                if time.monotonic() < next_update:
                    continue
                weight = weight_for(handled, busy_s, backlog_fraction(gw.sock), gw.weight)
                if abs(weight - gw.weight) > gw.weight // 10:
                    gw.weight = weight  # sends a heartbeat with the new weight at once
                    print(f"handled {handled} datagrams in {busy_s:.3f} s busy: weight {weight}", flush=True)
                handled, busy_s, next_update = 0, 0.0, time.monotonic() + args.period
        except KeyboardInterrupt:
            pass
    print("deregistered", flush=True)


if __name__ == "__main__":
    main()
