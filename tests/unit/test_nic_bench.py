"""The NIC-like end-to-end benchmark's pure parts (bench/e2e): frames, the replay-clients
checksum arithmetic, /proc parsing, the two-mode split, ratios, targets and the report."""

from __future__ import annotations

import math
import os
import socket
import struct
import sys

import pytest

E2E = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "e2e")
sys.path.insert(0, os.path.abspath(E2E))

import live_frames  # noqa: E402
import nic_report  # noqa: E402
from nic_measure import NicPoint, NicResult  # noqa: E402
from nic_systems import WEIGHT_CHANGE_GATEWAYS, WEIGHT_CHANGE_KEY  # noqa: E402

from bench.micro_packets import UDP_OFFSET, udp4_checksum_ok, udp4_frame, udp_fields  # noqa: E402

SOFTIRQS = """                    CPU0       CPU1
          HI:          1          0
       TIMER:     123456      98765
      NET_TX:         10         20
      NET_RX:    5550001    4440002
       BLOCK:          0          0
"""


def csum_replace16(check: int, old: int, new: int) -> int:
    """kernel/packet/csum.bpf.h's csum_replace16, on host-order 16-bit values."""
    total = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_frame_to_a_device_verifies_with_its_addresses() -> None:
    mac = bytes([0x02, 0x11, 0x22, 0x33, 0x44, 0x55])
    frame = udp4_frame(40000, 2152, bytes(32), socket.inet_aton("10.199.0.1"), socket.inet_aton("10.199.0.2"),
                       dest_mac=mac)
    assert frame[:6] == mac
    assert frame[14 + 12 : 14 + 20] == socket.inet_aton("10.199.0.1") + socket.inet_aton("10.199.0.2")
    assert udp4_checksum_ok(frame)
    assert udp_fields(frame).dest == 2152


@pytest.mark.parametrize("client", [0, 1, 255, 1023])
def test_replay_clients_source_port_update_keeps_the_checksum_valid(client: int) -> None:
    # replay_clients.bpf.c: source = template source + client, check updated incrementally
    frame = udp4_frame(40000, 2152, bytes(range(32)), socket.inet_aton("10.199.0.1"), socket.inet_aton("10.199.0.2"))
    fields = udp_fields(frame)
    port = fields.source + client
    check = csum_replace16(fields.check, fields.source, port) or 0xFFFF
    rewritten = bytearray(frame)
    struct.pack_into("!H", rewritten, UDP_OFFSET, port)
    struct.pack_into("!H", rewritten, UDP_OFFSET + 6, check)
    assert udp4_checksum_ok(bytes(rewritten))


def test_net_rx_softirqs_of_one_cpu() -> None:
    assert live_frames.net_rx_softirqs(0, SOFTIRQS) == 5550001
    assert live_frames.net_rx_softirqs(1, SOFTIRQS) == 4440002


def test_ksoftirqd_mode_is_a_share_of_the_injection_time() -> None:
    assert not live_frames.in_ksoftirqd_mode(0.04e9, 1.0)
    assert live_frames.in_ksoftirqd_mode(0.3e9, 1.0)
    assert not live_frames.in_ksoftirqd_mode(1e9, 0.0)


def point(delivered: int, ksoftirqd_s: float = 0.0, sent: int | None = None, cpu_ns: float = 1000.0,
          ports: tuple[int, ...] = (4001, 4002, 4003), changes: int = 0) -> NicPoint:
    per_port = {p: delivered // len(ports) for p in ports}
    per_port[ports[0]] += delivered - sum(per_port.values())
    total = sum(per_port.values())
    return NicPoint(target_pps=0, sent=sent if sent is not None else total, send_seconds=1.0, per_port=per_port,
                    busy_ns=cpu_ns * total, udp_delta={"InCsumErrors": 0, "RcvbufErrors": 0},
                    ksoftirqd_ns=ksoftirqd_s * 1e9, changes=changes)


def result(key: str, rates: list[int], weights: list[int] | None = None, ksoft: int | None = None,
           **kwargs) -> NicResult:
    weights = weights or [1, 1, 1]
    ports = [4001 + i for i in range(len(weights))]
    r = NicResult(key, key, "nic", key != "nic-ceiling", ports, weights)
    r.points = [point(rate, 0.3 if i == ksoft else 0.0, ports=tuple(ports), **kwargs) for i, rate in enumerate(rates)]
    return r


def test_ksoftirqd_points_are_kept_out_of_the_median_and_the_pairs() -> None:
    spread = result("nic-spread", [1000, 1000, 700, 1000, 1000], ksoft=2)
    lb = result("nic-ebpflb", [990, 990, 990, 990, 600], ksoft=4)
    assert spread.saturation.delivered == 1000
    assert [p.delivered for p in lb.ksoftirqd_points()] == [600]
    # round 2 (spread in ksoftirqd mode) and round 4 (ebpflb) are left out of the pairs
    assert nic_report.paired_ratio(lb, spread) == pytest.approx(0.99)


def test_targets_and_table() -> None:
    results = [
        result("nic-ceiling", [1200] * 3),
        result("nic-spread", [1000] * 3),
        result("nic-ebpflb", [985] * 3, cpu_ns=900.0),
        result("nic-ebpflb-affinity", [940] * 3),
        result("nic-nftables", [700] * 3, cpu_ns=1300.0),
        result(WEIGHT_CHANGE_KEY, [1000] * 3, weights=[1] * WEIGHT_CHANGE_GATEWAYS),
        result(nic_report.CHANGES_KEY, [960] * 3, weights=[1] * WEIGHT_CHANGE_GATEWAYS, changes=2000),
        result(nic_report.CONTROL_CHANGES_KEY, [870] * 3, weights=[1] * WEIGHT_CHANGE_GATEWAYS, changes=2000),
    ]
    lines = nic_report.target_checks(results)
    assert any("ebpflb per" not in line and "nic-ebpflb delivered 0.985" in line and "met" in line for line in lines)
    assert any("nic-ebpflb-affinity delivered 0.940" in line and "MISSED" in line for line in lines)
    assert any("1.41x nftables" in line and "lower met" in line for line in lines)
    assert any("every 1 ms as registration datagrams: delivered 0.960" in line and "target >= 0.95 met" in line
               and "lost 0 of" in line for line in lines)
    assert any("every 1 ms through the control program: delivered 0.870" in line and "target" not in line
               for line in lines)
    rows = nic_report.build_table(results)
    ebpflb = next(r for r in rows if r["key"] == "nic-ebpflb")
    assert ebpflb["vs_ceiling"] == pytest.approx(985 / 1200)
    assert math.isnan(next(r for r in rows if r["key"] == "nic-ceiling")["weight_err"])
    assert len(nic_report.table_rows(rows)) == 5  # the weight-change runs have a table of their own
    assert len(nic_report.change_rows(results)) == 3


def test_loss_under_weight_changes_misses_the_target() -> None:
    quiet = result(WEIGHT_CHANGE_KEY, [1000] * 2)
    changing = result(nic_report.CHANGES_KEY, [1000] * 2, sent=1001)
    quiet.ports = changing.ports = list(range(4001, 4001 + WEIGHT_CHANGE_GATEWAYS))
    (line,) = nic_report.target_checks([quiet, changing])
    assert "lost 2 of 2002 datagrams, target 0 MISSED" in line


def test_results_round_trip_through_json() -> None:
    r = result("nic-ebpflb-reply-nat", [1000, 900], ksoft=1)
    r.points[0].replies = 1000
    r.points[0].counters = {"replies_nat": 1000}
    back = NicResult.from_dict(r.as_dict())
    assert [p.as_dict() for p in back.points] == [p.as_dict() for p in r.points]
    assert back.saturation.replies == 1000
    assert back.ksoftirqd_points()[0].delivered == 900


def test_profile_top_self_and_program_shares() -> None:
    import perf_profile
    report = """# Children      Self  Symbol
    90.00%     0.00%  [k] xdp_test_run_batch
    40.00%     2.00%  [k] __udp4_lib_rcv
     9.00%     9.00%  [k] bpf_prog_0123abcd_ebpflb_xdp
     1.50%     1.50%  [k] bpf_prog_89abcdef_replay
    12.00%    12.00%  [k] memset
"""
    assert perf_profile.top_self(report, 2) == [("memset", 12.0), ("bpf_prog_0123abcd_ebpflb_xdp", 9.0)]
    shares = perf_profile.parse(report)
    assert shares["ebpflb program (self)"] == 9.0
    assert shares["other BPF programs (self)"] == 1.5
    assert shares["UDP receive"] == 40.0


def test_recorded_ebpflb_counters_are_fields_of_the_layout() -> None:
    from nic_systems import EBPFLB_COUNTERS

    from ebpflb.bpf.layout import GlobalCounters

    names = {name for name, _ in GlobalCounters._fields_}
    assert set(EBPFLB_COUNTERS) <= names
