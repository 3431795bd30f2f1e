"""`ebpflb top`'s arithmetic: per-second rates and shares between two snapshots."""

from __future__ import annotations

from ebpflb.bpf.layout import GlobalCounters, LbState, RejectReason
from ebpflb.cli.top import plain_lines, rates
from ebpflb.dataplane import GatewayInfo, Snapshot


def snap(gateways: list[GatewayInfo], service: int = 0, rejected_short: int = 0) -> Snapshot:
    counters = GlobalCounters(service=service)
    counters.reg_rejected[RejectReason.SHORT_PAYLOAD] = rejected_short
    return Snapshot(LbState(), counters, gateways)


def gw(slot: int, port: int, weight: int, packets: int, up: bool = True, static: bool = False) -> GatewayInfo:
    return GatewayInfo(slot, port, weight, static, 1.5, packets, packets * 32, up)


def test_rates_and_shares_over_the_interval() -> None:
    before = snap([gw(0, 7001, 1, 1000), gw(1, 7002, 3, 3000)], service=4000)
    now = snap([gw(0, 7001, 1, 1100), gw(1, 7002, 3, 3300)], service=4400, rejected_short=4)
    r = rates(before, now, 2.0)
    assert [(g.port, g.packets, g.packets_per_s, g.bytes_per_s, g.packet_share) for g in r.gateways] == [
        (7001, 100, 50.0, 1600.0, 0.25),
        (7002, 300, 150.0, 4800.0, 0.75),
    ]
    assert [g.weight_share for g in r.gateways] == [0.25, 0.75]
    assert (r.service, r.rejected) == (200.0, {"short_payload": 2.0})


def test_a_new_gateway_or_a_reused_slot_counts_from_zero_and_a_down_one_has_no_share() -> None:
    before = snap([gw(0, 7001, 1, 500)])
    now = snap([gw(0, 7009, 1, 40), gw(1, 7002, 1, 10, up=False, static=True)])
    r = rates(before, now, 1.0)
    assert [(g.port, g.packets_per_s, g.weight_share, g.age_s) for g in r.gateways] == [
        (7002, 10.0, 0.0, None),
        (7009, 40.0, 1.0, 1.5),
    ]
    lines = plain_lines(r)
    assert "2 gateway(s)" in lines[0] and "DOWN" in lines[1] and "age static" in lines[1]
