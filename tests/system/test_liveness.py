"""Liveness from the socket itself: real dnsmasq servers as static gateways, killed with
SIGKILL and started again, and a registered gateway that disappears without deregistering.
No query may fail or reach a closed port (UdpNoPorts), and `gateways` shows `up`."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from ..netns import NetNS
from ..traffic import LOOPBACK, SERVICE_PORT, Gateway, cli_ok, drain_all, gateways_json, status_json, wait_until
from .test_reply_nat import DNS_PORTS, UDP_NO_PORTS, add_dns_gateways, answer_of, dig, dns_servers, start_dns_server

pytestmark = pytest.mark.kernel


def up_of(ns: NetNS, pin_path: str) -> dict[int, bool]:
    return {port: row["up"] for port, row in gateways_json(ns, pin_path).items()}


def test_a_killed_static_server_gets_nothing_and_comes_back(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    with dns_servers(netns) as servers:
        add_dns_gateways(netns, pin_path)
        by_weight = (7001, 7002, 7002, 7003, 7003, 7003) * 2
        assert sorted(dig(netns, SERVICE_PORT, 12)) == sorted(answer_of(p) for p in by_weight)
        victim = DNS_PORTS.index(7002)
        servers[victim].send_signal(signal.SIGKILL)
        servers[victim].wait()
        before = netns.nstat(UDP_NO_PORTS)
        # the next query bound for it finds no socket: rerouted, and the gateway marked down
        start = time.monotonic()
        answers: list[str] = []
        while up_of(netns, pin_path)[7002]:
            assert time.monotonic() - start < 2.0, "the killed server is still up after 2 s"
            answers += dig(netns, SERVICE_PORT, 6)
        answers += dig(netns, SERVICE_PORT, 30)
        assert answers and all(a in (answer_of(7001), answer_of(7003)) for a in answers), answers
        assert netns.nstat(UDP_NO_PORTS) == before
        info = gateways_json(netns, pin_path)[7002]
        assert (info["up"], info["static"], info["weight_share"]) == (False, True, 0.0)
        assert status_json(netns, pin_path)["counters"]["gateways_found_dead"] == 1

        # started again: up within 2 s of traffic, and it answers its share again
        servers[victim] = start_dns_server(netns, 7002)
        start = time.monotonic()
        while not up_of(netns, pin_path)[7002]:
            assert time.monotonic() - start < 2.0, "the restarted server is not up after 2 s"
            dig(netns, SERVICE_PORT, 3)
        assert wait_until(lambda: answer_of(7002) in dig(netns, SERVICE_PORT, 12), 2.0)
        assert netns.nstat(UDP_NO_PORTS) == before


def test_a_registered_gateway_whose_socket_is_gone_is_removed(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    with netns.entered():
        stays, goes = Gateway(), Gateway()
    try:
        stays.register(1)
        goes.register(1)
        assert wait_until(lambda: set(gateways_json(netns, pin_path)) == {stays.port, goes.port}, 2.0)
        gone = goes.port
        goes.close()  # as a killed process: no deregistration
        before = netns.nstat(UDP_NO_PORTS)
        with netns.entered():
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with client:
            for seq in range(40):
                client.sendto(b"x%d" % seq, (LOOPBACK[4], SERVICE_PORT))
        assert wait_until(lambda: drain_all([stays]) >= 0 and stays.count >= 40, 2.0), stays.count
        assert gone not in gateways_json(netns, pin_path)
        assert netns.nstat(UDP_NO_PORTS) == before
        counters = status_json(netns, pin_path)["counters"]
        assert (counters["gateways_found_dead"], counters["expired"]) == (1, 0)
    finally:
        stays.close()
