"""A gateway that deregisters with `ebpflb.gateway.Gateway.close()` loses nothing: it stops
receiving before its socket closes. 100 open/register/close cycles under a steady stream, with
no socket on the service port to catch strays: every datagram reaches a gateway socket and the
kernel counts no datagram to a port without a socket."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from ebpflb import gateway

from ..netns import NetNS
from ..traffic import LOOPBACK, Gateway, cli_ok, drain_all, seq_of, status_json, wait_for_total, wait_until

pytestmark = pytest.mark.kernel

CYCLES = 100
RATE = 4000.0  # datagrams per second
UDP_COUNTERS = ["UdpNoPorts", "UdpRcvbufErrors"]


class Reader(threading.Thread):
    """Reads a helper gateway's socket until the helper closes it, keeping every payload."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.received: list[bytes] = []

    def run(self) -> None:
        while True:
            try:
                if not select.select([self.sock], [], [], 0.005)[0]:
                    continue
                self.received.append(self.sock.recv(65535))
            except (OSError, ValueError):  # closed by Gateway.close()
                return


def test_close_after_the_grace_period_loses_nothing(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    count = int(RATE * (CYCLES * (gateway.DEREGISTER_GRACE_S + 0.06) + 4))
    retired: list[Reader] = []
    with netns.entered():
        stable = [Gateway(4), Gateway(4)]  # always live: no datagram needs a fallback
        for gw in stable:
            gw.register(5)
        sender = netns.popen(
            sys.executable, "-m", "tests.traffic", "stream", "--count", str(count), "--rate", str(RATE),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stop_draining = threading.Event()

        def keep_draining() -> None:  # the stable gateways' queues must never overflow
            while not stop_draining.wait(0.002):
                drain_all(stable)

        drainer = threading.Thread(target=keep_draining, daemon=True)
        drainer.start()
        try:
            for _ in range(CYCLES):
                churn = gateway.Gateway(port=0, weight=5, host=LOOPBACK[4], interval=0.05)
                reader = Reader(churn.sock)
                reader.start()
                # in rotation: it receives part of the stream
                assert wait_until(lambda r=reader: r.received, 2.0), "a registered gateway got no datagram"
                churn.close()
                reader.join(timeout=2)
                retired.append(reader)
            still_streaming = sender.poll() is None
            out, err = sender.communicate(timeout=60)
        finally:
            stop_draining.set()
            drainer.join()
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        assert sender.returncode == 0, err
        sent = int(out.strip())
        churned = sum(len(r.received) for r in retired)
        held = wait_for_total(stable, sent - churned) + churned
        for gw in stable:
            gw.close()

    assert still_streaming, "the stream ended before the cycles did: raise its count"
    assert netns.nstat(UDP_COUNTERS) == {name: 0 for name in UDP_COUNTERS}, "a datagram reached a closed port"
    assert held == sent, f"{sent} sent, {held} received"
    payloads = [p for gw in stable for p in gw.received] + [p for r in retired for p in r.received]
    assert sorted(seq_of(p) for p in payloads) == list(range(sent))
    counters = status_json(netns, pin_path)["counters"]
    assert counters["no_gateway_passed"] == 0
    assert counters["service"] == sent


def test_close_without_grace_is_still_possible(netns: NetNS, pin_path: str) -> None:
    """grace=0 closes at once (for callers that drain the socket themselves)."""
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    with netns.entered():
        churn = gateway.Gateway(port=0, weight=1, host=LOOPBACK[4])
        started = time.monotonic()
        churn.close(grace=0)
        assert time.monotonic() - started < gateway.DEREGISTER_GRACE_S
        assert churn.sock.fileno() == -1
