"""Flow affinity on packet fixtures through BPF_PROG_TEST_RUN, on one CPU: a flow keeps its
gateway, new flows follow the weights, flows expire, move when their gateway leaves, and a
full table evicts (counted)."""

from __future__ import annotations

import struct
import time
from collections import Counter, defaultdict
from typing import Callable, Iterator

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from ebpflb.bpf.layout import FLOW_TABLE_SIZE, CtlOp

from .. import packets as P
from ..dataplane import XDP_PASS, Dataplane, default_config, loaded, on_one_cpu

pytestmark = pytest.mark.kernel

PORTS = (7001, 7002, 7003)
WEIGHTS = (1, 2, 3)
AFFINITY_KEY = {"client": 0, "gtpu": 1}


def gtpu(teid: int, payload: bytes = b"user plane") -> bytes:
    """A GTPv1-U G-PDU: flags 0x30 (version 1, GTP), type 0xFF, length, TEID."""
    return struct.pack("!BBHI", 0x30, 0xFF, len(payload), teid) + payload


@pytest.fixture
def affinity(pin_path: str, request) -> Iterator[tuple[Dataplane, Callable[[bytes], int]]]:
    """Loaded with the given (affinity_s, key); 3 static gateways 1, 2, 3; run(frame) -> port."""
    seconds, key = request.param
    config = default_config(affinity_ns=int(seconds * 1e9), affinity_key=AFFINITY_KEY[key])
    with loaded(pin_path, config) as dp, on_one_cpu():
        dp.instance.control(CtlOp.SWEEP)
        for port, weight in zip(PORTS, WEIGHTS):
            dp.instance.control(CtlOp.ADD_STATIC, port, weight)

        def run(frame: bytes) -> int:
            verdict, out = dp.run(frame)
            assert verdict == XDP_PASS
            return int(Ether(out)[UDP].dport)

        yield dp, run


@pytest.mark.parametrize("affinity", [(60, "client")], indirect=True)
def test_each_client_keeps_its_gateway_and_clients_follow_the_weights(affinity) -> None:
    dp, run = affinity
    seen: dict[int, set[int]] = defaultdict(set)
    for _ in range(5):  # 60 clients, interleaved, 5 datagrams each
        for client in range(60):
            seen[client].add(run(P.udp4(P.SERVICE_PORT, sport=20000 + client)))
    assert all(len(ports) == 1 for ports in seen.values()), seen
    assert Counter(next(iter(p)) for p in seen.values()) == {7001: 10, 7002: 20, 7003: 30}
    counters = dp.counters()
    assert (counters["flows_created"], counters["flows_expired"], counters["flows_moved"]) == (60, 0, 0)
    assert counters["service"] == 300


@pytest.mark.parametrize("affinity", [(60, "client")], indirect=True)
def test_ipv4_and_ipv6_clients_are_different_flows(affinity) -> None:
    dp, run = affinity
    first = {run(P.udp4(P.SERVICE_PORT, sport=20000)), run(P.udp6(P.SERVICE_PORT, sport=20000))}
    assert len(first) == 2  # two flows: the second took the next position of the schedule
    assert dp.counters()["flows_created"] == 2


@pytest.mark.parametrize("affinity", [(60, "gtpu")], indirect=True)
def test_each_teid_keeps_its_gateway_from_one_client_socket(affinity) -> None:
    dp, run = affinity
    seen: dict[int, set[int]] = defaultdict(set)
    for _ in range(4):
        for teid in range(1, 61):
            seen[teid].add(run(P.udp4(P.SERVICE_PORT, gtpu(teid), sport=2152)))
    assert all(len(ports) == 1 for ports in seen.values()), seen
    assert Counter(next(iter(p)) for p in seen.values()) == {7001: 10, 7002: 20, 7003: 30}
    # not a G-PDU (an echo request, type 1), or too short: the client's flow
    echo = struct.pack("!BBHI", 0x32, 0x01, 4, 99) + bytes(4)
    assert len({run(P.udp4(P.SERVICE_PORT, echo, sport=2152)) for _ in range(6)}) == 1
    assert len({run(P.udp4(P.SERVICE_PORT, b"short", sport=2152)) for _ in range(6)}) == 1
    assert dp.counters()["flows_created"] == 61


@pytest.mark.parametrize("affinity", [(0.001, "client")], indirect=True)
def test_a_flow_not_seen_for_the_affinity_time_is_chosen_anew(affinity) -> None:
    dp, run = affinity
    frame = P.udp4(P.SERVICE_PORT, sport=20000)
    run(frame)
    time.sleep(0.05)  # many jiffies: the coarse clock moves past 1 ms
    run(frame)
    counters = dp.counters()
    assert (counters["flows_created"], counters["flows_expired"]) == (1, 1)


@pytest.mark.parametrize("affinity", [(60, "client")], indirect=True)
def test_a_flow_whose_gateway_leaves_moves_to_a_live_one(affinity) -> None:
    dp, run = affinity
    frame = P.udp4(P.SERVICE_PORT, sport=20000)
    first = run(frame)
    dp.instance.control(CtlOp.SET_WEIGHT, first, 0)
    moved = run(frame)
    assert moved != first and moved in PORTS
    assert all(run(frame) == moved for _ in range(10))
    assert dp.counters()["flows_moved"] == 1


@pytest.mark.parametrize("affinity", [(60, "client")], indirect=True)
def test_a_full_table_takes_new_flows_in_place_of_the_least_recent(affinity) -> None:
    dp, run = affinity
    clients = FLOW_TABLE_SIZE + 1000
    template = bytearray(P.udp4(P.SERVICE_PORT, sport=30000))
    for client in range(clients):  # distinct source addresses 127.x.y.z (no checksum is verified here)
        template[27:30] = client.to_bytes(3, "big")
        assert dp.run(bytes(template))[0] == XDP_PASS  # unparsed: Scapy would take most of the time
    counters = dp.counters()
    assert counters["flows_created"] == clients
    assert counters["service"] == clients


def client_frames(count: int) -> list[bytes]:
    """One datagram of each of `count` clients, distinct source addresses 127.x.y.z (built
    by hand: Scapy would take most of the time; no checksum is verified here)."""
    template = bytearray(P.udp4(P.SERVICE_PORT, sport=30000))
    frames = []
    for client in range(count):
        template[27:30] = (client + 1).to_bytes(3, "big")
        frames.append(bytes(template))
    return frames


def gateway_of(out: bytes) -> int:
    return int.from_bytes(out[36:38], "big")  # Ethernet 14 + IPv4 20, then the UDP destination port


@pytest.mark.parametrize("affinity", [(60, "client")], indirect=True)
def test_many_flows_in_turn_keep_their_gateways_and_move_when_one_leaves(affinity) -> None:
    """More flows than one cache block, each seen in turn (as a busy GTP-U or QUIC front does):
    every datagram of a flow reaches one gateway, flows split exactly by weight, and when a
    gateway leaves, exactly its flows move (past the per-CPU cache that holds them)."""
    dp, _ = affinity
    frames = client_frames(6 * 683)  # a whole number of the 1, 2, 3 schedule's 6-pick cycles
    seen: dict[int, set[int]] = defaultdict(set)
    for _ in range(3):
        for client, frame in enumerate(frames):
            verdict, out = dp.run(frame)
            assert verdict == XDP_PASS
            seen[client].add(gateway_of(out))
    assert all(len(ports) == 1 for ports in seen.values())
    home = {client: next(iter(ports)) for client, ports in seen.items()}
    assert Counter(home.values()) == {7001: 683, 7002: 1366, 7003: 2049}
    dp.instance.control(CtlOp.SET_WEIGHT, 7003, 0)
    after = {client: gateway_of(dp.run(frame)[1]) for client, frame in enumerate(frames)}
    assert all(after[c] == home[c] for c in home if home[c] != 7003)
    assert {after[c] for c in home if home[c] == 7003} <= {7001, 7002}
    counters = dp.counters()
    assert (counters["flows_created"], counters["flows_moved"], counters["flows_expired"]) == (len(frames), 2049, 0)


@pytest.mark.parametrize("affinity", [(0.5, "client")], indirect=True)
def test_a_flow_served_from_the_cache_stays_while_active_and_expires_when_idle(affinity) -> None:
    """The per-CPU cache must neither let an active flow expire in the table (its hits do not
    write the seen time) nor keep an idle one past the affinity time."""
    dp, run = affinity
    frame = P.udp4(P.SERVICE_PORT, sport=20000)
    first = run(frame)
    end = time.monotonic() + 1.2  # active for more than twice the affinity time, a datagram every 10 ms
    while time.monotonic() < end:
        assert run(frame) == first
        time.sleep(0.01)
    assert (dp.counters()["flows_created"], dp.counters()["flows_expired"]) == (1, 0)
    time.sleep(0.7)  # idle for longer than the affinity time
    run(frame)
    assert (dp.counters()["flows_created"], dp.counters()["flows_expired"]) == (1, 1)
