"""Reply NAT with real request/response software: three dnsmasq servers behind ebpflb as
static gateways, queried with dig (whose socket only takes replies from where it sent), and
connected Python sockets. Without reply NAT the same queries fail, as before the feature."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
from collections import Counter
from typing import Iterator

import pytest

from ..netns import NetNS
from ..traffic import SERVICE_PORT, cli_ok, family, pinned_to_cpu, status_json, wait_until

pytestmark = pytest.mark.kernel

DNS_PORTS = (7001, 7002, 7003)
DNS_WEIGHTS = (1, 2, 3)
NAME = "svc.test"
UDP_NO_PORTS = ["UdpNoPorts", "Udp6NoPorts"]
LOCALHOST = {4: "127.0.0.1", 6: "::1"}


def answer_of(port: int) -> str:
    """The A record the server on `port` gives for NAME: tells which server answered."""
    return f"127.0.1.{DNS_PORTS.index(port) + 1}"


def start_dns_server(ns: NetNS, port: int) -> subprocess.Popen:
    """dnsmasq on 127.0.0.1:port (no upstream, no cache), answering NAME with answer_of(port),
    returned once its socket is bound."""
    server = ns.popen(
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--cache-size=0",
        "--pid-file=",
        "--user=root",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        f"--address=/{NAME}/{answer_of(port)}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # bound, not asked directly: once the port is a gateway, reply NAT gives its answers port 2152
    if not wait_until(lambda: f"127.0.0.1:{port} " in ns.run("ss", "-Hnlu").stdout, 5.0):
        server.kill()
        server.wait()
        raise AssertionError(f"dnsmasq on port {port} did not answer")
    return server


@contextlib.contextmanager
def dns_servers(ns: NetNS) -> Iterator[list[subprocess.Popen]]:
    """dnsmasq on each of DNS_PORTS, each answering directly; all stopped afterwards (also
    those the test replaced in the list)."""
    servers: list[subprocess.Popen] = []
    try:
        for port in DNS_PORTS:
            servers.append(start_dns_server(ns, port))
            assert dig(ns, port, 1, timeout_s=1) == [answer_of(port)]  # asked directly: not a gateway yet
        yield servers
    finally:
        for server in servers:
            server.kill()
            server.wait()


def dig(ns: NetNS, port: int, queries: int, timeout_s: int = 2) -> list[str]:
    """`queries` A queries for NAME in one dig run pinned to CPU 0 (one scheduler cursor);
    one line per query: the answer, or dig's error."""
    batch = "\n".join(f"{NAME} A" for _ in range(queries)) + "\n"
    result = ns.run(
        "taskset",
        "-c",
        "0",
        "dig",
        "@127.0.0.1",
        "-p",
        str(port),
        "+short",
        "+tries=1",
        f"+time={timeout_s}",
        "-f",
        "-",
        input=batch,
        timeout=queries * (timeout_s + 1) + 10,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def add_dns_gateways(ns: NetNS, pin_path: str) -> None:
    for port, weight in zip(DNS_PORTS, DNS_WEIGHTS):
        cli_ok(ns, "gateways", "add", str(port), "--weight", str(weight), "--pin-path", pin_path)


def test_dig_through_ebpflb_gets_every_answer_split_by_weight(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    assert status_json(netns, pin_path)["config"]["reply_nat"] is True
    with dns_servers(netns):
        add_dns_gateways(netns, pin_path)
        before = netns.nstat(UDP_NO_PORTS)
        answers = dig(netns, SERVICE_PORT, 60)
        after = netns.nstat(UDP_NO_PORTS)
    # every query answered (dig takes an answer only from 127.0.0.1#2152), 10/20/30 by weight
    assert Counter(answers) == {answer_of(p): 10 * w for p, w in zip(DNS_PORTS, DNS_WEIGHTS)}, answers
    assert after == before
    assert status_json(netns, pin_path)["counters"]["replies_nat"] == 60


def test_without_reply_nat_dig_fails_as_before(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--no-reply-nat", "--pin-path", pin_path)
    info = status_json(netns, pin_path)
    assert info["config"]["reply_nat"] is False
    with dns_servers(netns):
        add_dns_gateways(netns, pin_path)
        before = netns.nstat(UDP_NO_PORTS)
        answers = dig(netns, SERVICE_PORT, 3, timeout_s=1)
        after = netns.nstat(UDP_NO_PORTS)
    assert not any(a.startswith("127.0.1.") for a in answers), answers
    # the servers answered, from their own ports: the client's connected socket took none
    assert after["UdpNoPorts"] - before["UdpNoPorts"] == 3
    assert status_json(netns, pin_path)["counters"]["replies_nat"] == 0


def exchange(client: socket.socket, servers: list[socket.socket], served: Counter[int]) -> None:
    """30 requests from the connected client, each answered by the server it reached."""
    for seq in range(30):
        client.send(b"q%d" % seq)
        ready, _, _ = select.select(servers, [], [], 2)
        assert len(ready) == 1, f"query {seq} reached {len(ready)} servers"
        data, address = ready[0].recvfrom(100)
        assert data == b"q%d" % seq
        ready[0].sendto(b"r%d" % seq, address)
        assert client.recv(100) == b"r%d" % seq
        served[ready[0].getsockname()[1]] += 1


@pytest.mark.parametrize("version", [4, 6])
def test_connected_socket_gets_replies_from_the_service_port(netns: NetNS, pin_path: str, version: int) -> None:
    """Echo servers on three gateway ports: a connected client socket takes every reply. The
    NAT is stateless, so a gateway's datagram to another peer leaves from the service port too
    (as the README says); only those to the registration port keep the gateway's port."""
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    host = LOCALHOST[version]
    with netns.entered():
        servers = [socket.socket(family(version), socket.SOCK_DGRAM) for _ in DNS_PORTS]
        client = socket.socket(family(version), socket.SOCK_DGRAM)
        peer = socket.socket(family(version), socket.SOCK_DGRAM)
    try:
        for server, port in zip(servers, DNS_PORTS):
            server.bind((host, port))
            server.settimeout(2)
            cli_ok(netns, "gateways", "add", str(port), "--weight", "1", "--pin-path", pin_path)
        client.connect((host, SERVICE_PORT))
        client.settimeout(2)
        peer.bind((host, 0))
        peer.settimeout(2)
        served: Counter[int] = Counter()
        with pinned_to_cpu(0):  # one CPU's cursor: exact shares over whole cycles
            exchange(client, servers, served)
        assert served == {port: 10 for port in DNS_PORTS}
        # a gateway's datagram to another peer
        servers[0].sendto(b"to a peer", peer.getsockname())
        assert peer.recvfrom(100) == (b"to a peer", (host, SERVICE_PORT, *((0, 0) if version == 6 else ())))
    finally:
        for s in (*servers, client, peer):
            s.close()
    assert status_json(netns, pin_path)["counters"]["replies_nat"] == 31


def link_count(ns: NetNS) -> int:
    return len(json.loads(ns.run("bpftool", "-j", "link", "show", check=True).stdout or "[]"))


def test_unload_removes_the_reply_nat_links(netns: NetNS, pin_path: str) -> None:
    before = link_count(netns)
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    assert link_count(netns) == before + 1  # lo's egress
    assert [n for n in os.listdir(pin_path) if n.startswith("reply_nat_if")] == ["reply_nat_if1"]
    cli_ok(netns, "unload", "--pin-path", pin_path)
    assert link_count(netns) == before
