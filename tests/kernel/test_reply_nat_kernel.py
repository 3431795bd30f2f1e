"""The tc egress program (reply NAT) on packet fixtures through BPF_PROG_TEST_RUN: what it
rewrites, what it leaves alone, and the checksum it leaves (compared with one Scapy computes
from scratch). The test run's skb has no checksum offload, so the helper updates the field."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlOp
from ebpflb.bpf.object_file import REPLY_NAT_PROGRAM

from .. import packets as P
from ..dataplane import Dataplane, default_config, loaded, shared

pytestmark = pytest.mark.kernel

TC_ACT_OK = 0
GATEWAY = 7001
NOT_A_GATEWAY = 7009


@pytest.fixture(scope="module")
def with_reply_nat(bpffs: str) -> Iterator[Dataplane]:
    with shared(bpffs, default_config(reply_nat=1)) as dp:
        yield dp


@pytest.fixture
def reply_nat(with_reply_nat: Dataplane) -> Iterator[tuple[Dataplane, Callable[[bytes], bytes]]]:
    """The module's load, reset, with one static gateway; run(frame) is the tc program's output."""
    dp = with_reply_nat
    dp.reset()
    dp.instance.control(CtlOp.SWEEP)
    dp.instance.control(CtlOp.ADD_STATIC, GATEWAY, 5)
    fd = dp.obj.program_fd(REPLY_NAT_PROGRAM)

    def run(frame: bytes) -> bytes:
        verdict, out, _ = libbpf.test_run(fd, frame)
        assert verdict == TC_ACT_OK
        return out

    yield dp, run



def with_source_port(frame: bytes, port: int) -> bytes:
    packet = Ether(frame)
    packet[UDP].sport = port
    del packet[UDP].chksum
    return bytes(packet.__class__(bytes(packet)))


@pytest.mark.parametrize("make", [P.udp4, P.udp6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("size", [0, 1, 17, 200])
def test_a_gateways_reply_leaves_from_the_service_port(reply_nat, make, size: int) -> None:
    dp, run = reply_nat
    frame = make(P.CLIENT_PORT, bytes(range(size)), sport=GATEWAY)
    out = run(frame)
    assert out == with_source_port(frame, P.SERVICE_PORT)  # the port, and a checksum as if computed afresh
    assert dp.counters()["replies_nat"] == 1


@pytest.mark.parametrize(
    "frame",
    [
        P.udp4(P.REG_PORT, P.weight_payload(5), sport=GATEWAY),  # the gateway's own heartbeat
        P.udp6(P.REG_PORT, P.weight_payload(5), sport=GATEWAY),
        P.udp4(P.CLIENT_PORT, sport=NOT_A_GATEWAY),
        P.udp4(P.CLIENT_PORT, sport=P.SERVICE_PORT),
        P.tcp4(P.CLIENT_PORT),
        P.icmp4(),
        *P.fragments4(P.CLIENT_PORT, bytes(600), sport=GATEWAY)[1:],  # no UDP header to rewrite
    ],
    ids=["heartbeat4", "heartbeat6", "other-port", "service-port", "tcp", "icmp", "frag2", "frag3", "frag4"],
)
def test_other_egress_traffic_is_untouched(reply_nat, frame: bytes) -> None:
    dp, run = reply_nat
    assert run(frame) == frame
    assert dp.counters()["replies_nat"] == 0


def test_ipv4_without_checksum_stays_without(reply_nat) -> None:
    dp, run = reply_nat
    frame = P.udp4(P.CLIENT_PORT, b"no checksum", sport=GATEWAY, chksum=0)
    out = run(frame)
    assert Ether(out)[UDP].sport == P.SERVICE_PORT
    assert Ether(out)[UDP].chksum == 0


def test_a_removed_gateway_is_no_longer_natted(reply_nat) -> None:
    dp, run = reply_nat
    dp.instance.control(CtlOp.SET_WEIGHT, GATEWAY, 0)
    frame = P.udp4(P.CLIENT_PORT, sport=GATEWAY)
    assert run(frame) == frame


def test_off_in_the_configuration_is_a_pass_through(pin_path: str) -> None:
    with loaded(pin_path, default_config(reply_nat=0)) as dp:
        dp.instance.control(CtlOp.SWEEP)
        dp.instance.control(CtlOp.ADD_STATIC, GATEWAY, 5)
        frame = P.udp4(P.CLIENT_PORT, sport=GATEWAY)
        verdict, out, _ = libbpf.test_run(dp.obj.program_fd(REPLY_NAT_PROGRAM), frame)
        assert (verdict, out) == (TC_ACT_OK, frame)
