"""Only datagrams for this host are balanced: UDP to the service port that a router passes on
to another host stays untouched. Three namespaces: client, router (running ebpflb on its
client-side veth), server (listening on the service port itself)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from ..netns import NetNS
from ..traffic import SERVICE_PORT, Gateway, cli_ok, status_json, wait_until

pytestmark = pytest.mark.kernel

# private addresses of the test's own namespaces: client 10.214.1.2, router .1.1 / .2.1, server 10.214.2.2
CLIENT, ROUTER_IN, ROUTER_OUT, SERVER = "10.214.1.2", "10.214.1.1", "10.214.2.1", "10.214.2.2"
CLIENT6, ROUTER6_IN, ROUTER6_OUT, SERVER6 = "fdeb:f2::2", "fdeb:f2::1", "fdeb:f3::1", "fdeb:f3::2"


@dataclass
class Routed:
    client: NetNS
    router: NetNS
    server: NetNS


@pytest.fixture
def routed(netns_factory: Callable[[str], NetNS]) -> Iterator[Routed]:
    client, router, server = netns_factory("fcli"), netns_factory("frtr"), netns_factory("fsrv")
    client.ip("link", "add", "c0", "type", "veth", "peer", "name", "r0", "netns", router.name)
    server.ip("link", "add", "s0", "type", "veth", "peer", "name", "r1", "netns", router.name)
    links = (
        (client, "c0", [f"{CLIENT}/24", f"{CLIENT6}/64"]),
        (router, "r0", [f"{ROUTER_IN}/24", f"{ROUTER6_IN}/64"]),
        (router, "r1", [f"{ROUTER_OUT}/24", f"{ROUTER6_OUT}/64"]),
        (server, "s0", [f"{SERVER}/24", f"{SERVER6}/64"]),
    )
    for ns, ifname, addresses in links:
        for address in addresses:
            ns.ip("addr", "add", address, "dev", ifname, *(["nodad"] if ":" in address else []))
        ns.ip("link", "set", ifname, "up")
    client.ip("route", "add", "default", "via", ROUTER_IN)
    client.ip("-6", "route", "add", "default", "via", ROUTER6_IN)
    server.ip("route", "add", "default", "via", ROUTER_OUT)
    server.ip("-6", "route", "add", "default", "via", ROUTER6_OUT)
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        router.run("sysctl", "-qw", key, check=True)
    yield Routed(client, router, server)


def send(ns: NetNS, target: str, count: int) -> None:
    with ns.entered(), socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(b"datagram %d" % i, (target, SERVICE_PORT))


def received(sock: socket.socket, expected: int) -> int:
    got = 0

    def drain() -> bool:
        nonlocal got
        while True:
            try:
                sock.recv(2048)
                got += 1
            except BlockingIOError:
                return got >= expected

    wait_until(drain, 5.0)
    return got


@pytest.mark.parametrize("version", [4, 6])
def test_forwarded_datagrams_pass_untouched_local_ones_are_balanced(
    routed: Routed, pin_path: str, version: int
) -> None:
    server_address, router_address = (SERVER, ROUTER_IN) if version == 4 else (SERVER6, ROUTER6_IN)
    cli_ok(routed.router, "load", "r0", "--pin-path", pin_path)
    gws: list[Gateway] = []
    try:
        with routed.server.entered():
            listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            listener.bind(("::", SERVICE_PORT))  # IPv4 arrives mapped
            listener.setblocking(False)
        with routed.router.entered():
            gws = [Gateway(6, host="::") for _ in range(2)]
            gws[0].register(1)
            gws[1].register(1)
        with listener:
            assert wait_until(lambda: len(status_json(routed.router, pin_path)["interfaces"]) == 2, 5.0)
            send(routed.client, server_address, 20)
            assert received(listener, 20) == 20  # to the server's own port 2152, through the router
            send(routed.client, router_address, 6)
            assert wait_until(lambda: sum(g.drain() for g in gws) >= 0 and sum(g.count for g in gws) == 6, 5.0)
            assert [g.count for g in gws] == [3, 3]
            counters = status_json(routed.router, pin_path)["counters"]
            assert (counters["forwarded"], counters["service"]) == (20, 6)
    finally:
        for g in gws:
            g.close()
        cli_ok(routed.router, "unload", "--pin-path", pin_path)


def test_balance_forwarded_rewrites_forwarded_datagrams_too(routed: Routed, pin_path: str) -> None:
    cli_ok(routed.router, "load", "r0", "--balance-forwarded", "--pin-path", pin_path)
    try:
        with routed.router.entered(), Gateway(6, host="::") as gw:
            gw.register(1)
            assert wait_until(lambda: status_json(routed.router, pin_path)["gateways"] == 1, 5.0)
            send(routed.client, SERVER, 5)
            assert wait_until(lambda: status_json(routed.router, pin_path)["counters"]["service"] == 5, 5.0)
            assert status_json(routed.router, pin_path)["counters"]["forwarded"] == 0
            assert status_json(routed.router, pin_path)["config"]["balance_forwarded"] is True
    finally:
        cli_ok(routed.router, "unload", "--pin-path", pin_path)
