"""Flow affinity with real sockets: many client sockets, each client's datagrams on one
gateway and clients spread by weight; GTP-U from one socket, each TEID on one gateway."""

from __future__ import annotations

import socket
import struct
from collections import Counter, defaultdict

import pytest

from ..netns import NetNS
from ..traffic import LOOPBACK, SERVICE_PORT, Gateway, cli_ok, drain_all, pinned_to_cpu, status_json, wait_until

pytestmark = pytest.mark.kernel

WEIGHTS = (1, 2, 3)


def received(gws: list[Gateway]) -> dict[int, list[bytes]]:
    """Every payload each gateway got, by gateway port."""
    drain_all(gws)
    return {gw.port: list(gw.received) for gw in gws}


@pytest.mark.parametrize("key", ["client", "gtpu"])
def test_flows_stay_on_one_gateway_and_new_flows_follow_the_weights(netns: NetNS, pin_path: str, key: str) -> None:
    cli_ok(netns, "load", "lo", "--affinity", "30", "--affinity-key", key, "--pin-path", pin_path)
    config = status_json(netns, pin_path)["config"]
    assert (config["affinity_s"], config["affinity_key"]) == (30, key)
    with netns.entered():
        gws = [Gateway() for _ in WEIGHTS]
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(60 if key == "client" else 1)]
    try:
        for gw, weight in zip(gws, WEIGHTS):
            gw.register(weight)
        assert wait_until(lambda: status_json(netns, pin_path)["gateways"] == 3, 2.0)
        flows = 60
        with pinned_to_cpu(0):  # one CPU's cursor: new flows take consecutive schedule positions
            for rnd in range(5):
                for flow in range(flows):
                    if key == "client":
                        clients[flow].sendto(b"c%d.%d" % (flow, rnd), (LOOPBACK[4], SERVICE_PORT))
                    else:  # GTPv1-U G-PDU, TEID flow + 1
                        body = b"c%d.%d" % (flow, rnd)
                        gpdu = struct.pack("!BBHI", 0x30, 0xFF, len(body), flow + 1) + body
                        clients[0].sendto(gpdu, (LOOPBACK[4], SERVICE_PORT))
        assert wait_until(lambda: sum(len(p) for p in received(gws).values()) >= 5 * flows, 3.0)
        where: dict[int, set[int]] = defaultdict(set)
        for port, payloads in received(gws).items():
            for data in payloads:
                start = data.index(b"c")  # after the GTP-U header, if any (no TEID byte is 'c')
                flow = int(data[start + 1 : data.index(b".", start)])
                where[flow].add(port)
        assert len(where) == flows and all(len(ports) == 1 for ports in where.values()), where
        assert Counter(next(iter(p)) for p in where.values()) == {gws[i].port: 10 * w for i, w in enumerate(WEIGHTS)}
        counters = status_json(netns, pin_path)["counters"]
        assert (counters["flows_created"], counters["flows_moved"], counters["flow_table_full"]) == (flows, 0, 0)
    finally:
        for s in clients:
            s.close()
        for gw in gws:
            gw.close()

