"""The scheduler: the Python reference model on its own, then the kernel against it.

The kernel part registers gateways, sends datagrams through BPF_PROG_TEST_RUN on one CPU and
compares the output ports datagram for datagram with `scheduler.sequence(weights in slot
order, n)`, also across weight changes and removals (a new schedule starts from its beginning).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import reduce
from math import gcd

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebpflb import scheduler
from ebpflb.layout import MAX_GATEWAYS, MAX_WEIGHT, SCHED_SIZE, CtlOp

from . import packets as P
from .dataplane import XDP_DROP, XDP_PASS, Dataplane, on_one_cpu, shared

# ---------------------------------------------------------------- the model


def test_nginx_example() -> None:
    """nginx's documented order for weights a=5, b=1, c=1."""
    assert "".join("abc"[i] for i in scheduler.schedule([5, 1, 1])) == "aabacaa"


def test_equal_weights_rotate_in_slot_order() -> None:
    assert scheduler.schedule([1, 1, 1]) == [0, 1, 2]
    assert scheduler.schedule([7, 7, 7, 7]) == [0, 1, 2, 3]


def test_exact_counts_per_cycle() -> None:
    weights = [3, 1, 4, 1, 5, 9, 2, 6]
    cycle = scheduler.schedule(weights)
    assert len(cycle) == sum(weights) == 31
    assert Counter(cycle) == {i: w for i, w in enumerate(weights)}


def test_gcd_reduction() -> None:
    assert scheduler.cycle_length([10, 2, 2]) == 7
    assert scheduler.schedule([10, 2, 2]) == scheduler.schedule([5, 1, 1])
    assert scheduler.schedule([6, 4]) == [0, 1, 0, 1, 0]
    assert scheduler.cycle_length([65535, 65535]) == 2


def test_zero_weights_are_never_picked_and_keep_their_slot() -> None:
    assert scheduler.schedule([0, 3, 0, 1]) == [1, 1, 3, 1]
    assert scheduler.schedule([0, 0]) == []
    assert scheduler.schedule([]) == []
    assert scheduler.sequence([0], 5) == []


def test_long_cycles_are_capped() -> None:
    assert scheduler.cycle_length([4096, 1]) == SCHED_SIZE
    assert scheduler.cycle_length([4095, 1]) == SCHED_SIZE
    assert scheduler.cycle_length([4094, 1]) == 4095
    assert len(scheduler.schedule([MAX_WEIGHT, MAX_WEIGHT - 1])) == SCHED_SIZE


def test_capped_shares_within_a_tenth_of_a_point() -> None:
    weights = [MAX_WEIGHT, 40000, 12345, 999, 17, 1]
    cycle = scheduler.schedule(weights)
    assert len(cycle) == SCHED_SIZE
    counts = Counter(cycle)
    for i, w in enumerate(weights):
        assert abs(counts[i] / SCHED_SIZE - w / sum(weights)) < 0.001


def test_sequence_repeats_the_cycle() -> None:
    assert scheduler.sequence([5, 1, 1], 16) == [0, 0, 1, 0, 2, 0, 0] * 2 + [0, 0]


weight_lists = st.lists(st.integers(0, MAX_WEIGHT), min_size=1, max_size=32)
small_weight_lists = st.lists(st.integers(0, 40), min_size=1, max_size=32)


@settings(max_examples=150, deadline=None)
@given(small_weight_lists)
def test_uncapped_cycle_gives_each_its_reduced_weight(weights: list[int]) -> None:
    live = [w for w in weights if w]
    cycle = scheduler.schedule(weights)
    if not live:
        assert cycle == []
        return
    divisor = reduce(gcd, live)
    assert sum(live) // divisor <= SCHED_SIZE
    assert len(cycle) == scheduler.cycle_length(weights) == sum(live) // divisor
    assert Counter(cycle) == {i: w // divisor for i, w in enumerate(weights) if w}


@settings(max_examples=60, deadline=None)
@given(weight_lists)
def test_any_cycle_is_within_a_tenth_of_a_point(weights: list[int]) -> None:
    live = [w for w in weights if w]
    cycle = scheduler.schedule(weights)
    assert len(cycle) == scheduler.cycle_length(weights) <= SCHED_SIZE
    counts = Counter(cycle)
    assert set(counts) <= {i for i, w in enumerate(weights) if w}
    for i, w in enumerate(weights):
        if w:
            assert abs(counts[i] / len(cycle) - w / sum(live)) < 0.001


@settings(max_examples=100, deadline=None)
@given(small_weight_lists, st.integers(1, 10))
def test_scaling_all_weights_changes_nothing(weights: list[int], factor: int) -> None:
    assert scheduler.schedule([w * factor for w in weights]) == scheduler.schedule(weights)


@settings(max_examples=100, deadline=None)
@given(small_weight_lists, st.integers(0, 200))
def test_sequence_is_the_cycle_repeated(weights: list[int], count: int) -> None:
    cycle = scheduler.schedule(weights)
    picks = scheduler.sequence(weights, count)
    assert picks == ([cycle[k % len(cycle)] for k in range(count)] if cycle else [])


@settings(max_examples=100, deadline=None)
@given(small_weight_lists)
def test_smooth_no_gateway_waits_longer_than_its_share(weights: list[int]) -> None:
    """Smoothness: over any prefix, each gateway's count stays within 2 of its exact share
    (a plain weighted round-robin that sends runs of one gateway breaks this)."""
    cycle = scheduler.schedule(weights)
    total = sum(weights)
    counts: Counter[int] = Counter()
    for k, pick in enumerate(cycle, 1):
        counts[pick] += 1
        for i, w in enumerate(weights):
            if w:
                assert abs(counts[i] - k * w / total) < 2


# ---------------------------------------------------------------- the kernel against the model

SERVICE_V4 = P.udp4(P.SERVICE_PORT, b"scheduled")
SERVICE_V6 = P.udp6(P.SERVICE_PORT, b"scheduled")
PORT_OFFSET_V4 = 14 + 20 + 2  # Ethernet, IPv4 without options, UDP source port
PORT_OFFSET_V6 = 14 + 40 + 2
FIRST_GATEWAY_PORT = 10000


@pytest.fixture(scope="module")
def module_dataplane(bpffs: str) -> Iterator[Dataplane]:
    with shared(bpffs) as plane:
        yield plane


@pytest.fixture
def dataplane(module_dataplane: Dataplane) -> Dataplane:
    """The module's loaded object, reset to the state of a fresh load, in its own namespace."""
    module_dataplane.reset()
    return module_dataplane


def send(dataplane: Dataplane, count: int, ipv6: bool = False) -> list[int]:
    """Output ports of `count` service datagrams, on whatever CPU this thread is pinned to."""
    packet, offset = (SERVICE_V6, PORT_OFFSET_V6) if ipv6 else (SERVICE_V4, PORT_OFFSET_V4)
    ports = []
    for _ in range(count):
        verdict, out = dataplane.run(packet)
        assert verdict == XDP_PASS
        ports.append(int.from_bytes(out[offset : offset + 2], "big"))
    return ports


def expected_ports(dataplane: Dataplane, count: int) -> list[int]:
    """The model's first `count` picks for the live table, in slot order, as ports."""
    table = dataplane.gateways()
    by_slot = {slot: (port, weight) for port, (slot, weight) in table.items()}
    size = max(by_slot) + 1 if by_slot else 0
    weights = [by_slot[s][1] if s in by_slot else 0 for s in range(size)]
    return [by_slot[slot][0] for slot in scheduler.sequence(weights, count)]


def register(
    dataplane: Dataplane, weights: Sequence[int], by_packet: bool, first_port: int = FIRST_GATEWAY_PORT
) -> None:
    before = len(dataplane.gateways())
    for k, weight in enumerate(weights):
        port = first_port + k
        if by_packet:
            assert dataplane.run(P.registration4(port, weight))[0] == XDP_DROP
        else:
            dataplane.instance.control(CtlOp.ADD_STATIC, port=port, weight=weight)
    assert len(dataplane.gateways()) == before + len(weights)


def set_weight(dataplane: Dataplane, port: int, weight: int, by_packet: bool) -> None:
    if by_packet:
        assert dataplane.run(P.registration6(port, weight))[0] == XDP_DROP
    else:
        dataplane.instance.control(CtlOp.SET_WEIGHT, port=port, weight=weight)


def datagrams_for(dataplane: Dataplane) -> int:
    """Past the longest possible cycle: every wrap back to the start is checked, and a
    schedule that is not reduced by the gcd (so longer, and cut at SCHED_SIZE) shows."""
    return SCHED_SIZE + 37


def weight_sets() -> list[tuple[str, list[int]]]:
    rng = random.Random(4096)
    sets = [
        ("nginx 5,1,1", [5, 1, 1]),
        ("one gateway", [3]),
        ("gcd 6,4,2 reduces to 3,2,1", [6, 4, 2]),
        ("gcd 3000,2000,1000: sum above 4096, cycle of 6", [3000, 2000, 1000]),
        ("extremes 65535 and 1 (capped)", [MAX_WEIGHT, 1]),
        ("256 gateways of weight 1", [1] * MAX_GATEWAYS),
        ("256 random gateways (capped)", [rng.randint(1, MAX_WEIGHT) for _ in range(MAX_GATEWAYS)]),
    ]
    for k in range(8):
        sets.append((f"random small {k}", [rng.randint(1, 12) for _ in range(rng.randint(2, 9))]))
    for k in range(4):
        weights = [rng.randint(1, 3000) for _ in range(rng.randint(3, 40))]
        assert sum(weights) > SCHED_SIZE
        sets.append((f"random large {k} (sum {sum(weights)})", weights))
    return sets


WEIGHT_SETS = weight_sets()


@pytest.mark.kernel
@pytest.mark.parametrize("name,weights", WEIGHT_SETS, ids=[name for name, _ in WEIGHT_SETS])
def test_kernel_follows_the_model(dataplane: Dataplane, name: str, weights: list[int]) -> None:
    by_packet = WEIGHT_SETS.index((name, weights)) % 2 == 0  # half register by datagram
    register(dataplane, weights, by_packet)
    count = datagrams_for(dataplane)
    with on_one_cpu():
        got = send(dataplane, count, ipv6=by_packet)
    assert got == expected_ports(dataplane, count), first_difference(got, expected_ports(dataplane, count))


def first_difference(got: list[int], want: list[int]) -> str:
    for k, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            around = slice(max(0, k - 5), k + 5)
            return f"datagram {k}: port {a}, model {b}; got {got[around]}, want {want[around]}"
    return f"lengths {len(got)} and {len(want)}"


def check_sequence(dataplane: Dataplane, count: int) -> None:
    got = send(dataplane, count)
    want = expected_ports(dataplane, count)
    assert got == want, first_difference(got, want)


@pytest.mark.kernel
@pytest.mark.parametrize("by_packet", [True, False], ids=["by datagram", "by control op"])
def test_changes_restart_the_schedule(dataplane: Dataplane, by_packet: bool) -> None:
    rng = random.Random(17 + by_packet)
    register(dataplane, [rng.randint(1, 9) for _ in range(6)], by_packet)
    ports = sorted(dataplane.gateways())
    with on_one_cpu():
        check_sequence(dataplane, 11)  # stop mid-cycle, so a restart is visible

        set_weight(dataplane, ports[2], 13, by_packet)  # weight change
        check_sequence(dataplane, 23)

        set_weight(dataplane, ports[4], 1, by_packet)  # and another
        check_sequence(dataplane, 5)

        set_weight(dataplane, ports[0], 0, by_packet)  # removal leaves a hole in slot 0
        assert ports[0] not in dataplane.gateways()
        check_sequence(dataplane, 29)

        register(dataplane, [4], by_packet, first_port=20000)  # takes the freed slot 0
        assert dataplane.gateways()[20000] == (0, 4)
        check_sequence(dataplane, datagrams_for(dataplane))


@pytest.mark.kernel
def test_heartbeat_does_not_restart_the_schedule(dataplane: Dataplane) -> None:
    register(dataplane, [5, 1, 1], by_packet=True)
    with on_one_cpu():
        want = expected_ports(dataplane, 14)
        first = send(dataplane, 3)
        register_again = P.registration4(FIRST_GATEWAY_PORT + 1, 1)
        assert dataplane.run(register_again)[0] == XDP_DROP
        rest = send(dataplane, 11)
    assert first + rest == want


@pytest.mark.kernel
def test_each_cpu_has_its_own_cursor_and_restarts_on_change(dataplane: Dataplane) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    first, second = cpus[:2]
    register(dataplane, [5, 3, 2], by_packet=False)
    want = expected_ports(dataplane, 40)
    with on_one_cpu(first):
        a = send(dataplane, 7)
    with on_one_cpu(second):
        b = send(dataplane, 4)
    with on_one_cpu(first):
        a += send(dataplane, 9)
    assert a == want[:16]
    assert b == want[:4]

    dataplane.instance.control(CtlOp.SET_WEIGHT, port=FIRST_GATEWAY_PORT, weight=1)
    want = expected_ports(dataplane, 10)
    with on_one_cpu(second):
        assert send(dataplane, 10) == want
    with on_one_cpu(first):
        assert send(dataplane, 10) == want


# ---------------------------------------------------------------- a rebuild held up by another CPU

LIVE_PROBES = 8  # kernel/scheduler.bpf.h: entries tried when the picked gateway was removed


@contextlib.contextmanager
def rebuild_held(dataplane: Dataplane) -> Iterator[None]:
    """Sets lb_state.building as if another CPU were rebuilding the schedule, so changes stay
    unpublished and datagrams keep using the old schedule; clears it after."""

    def set_building(value: int) -> None:
        state = dataplane.state()
        state.building = value
        dataplane.write_map("lb_state", 0, state)

    set_building(1)
    try:
        yield
    finally:
        set_building(0)


def pending_picks(old_cycle: list[int], live: set[int], start: int, count: int) -> list[int | None]:
    """What the design promises while a rebuild is pending: the cursor keeps stepping the old
    cycle, and an entry whose gateway left is replaced by the next live one of the cycle
    (within LIVE_PROBES entries); None means passed without a gateway."""
    picks: list[int | None] = []
    for k in range(count):
        pos = start + k
        probes = (old_cycle[(pos + i) % len(old_cycle)] for i in range(LIVE_PROBES))
        picks.append(next((port for port in probes if port in live), None))
    return picks


def send_or_none(dataplane: Dataplane, count: int) -> list[int | None]:
    """Output ports, None for a datagram passed unchanged (no gateway)."""
    return [None if port == P.SERVICE_PORT else port for port in send(dataplane, count)]


@pytest.mark.kernel
def test_pending_rebuild_skips_a_removed_gateway(dataplane: Dataplane) -> None:
    register(dataplane, [1, 1, 1, 1], by_packet=True)
    a, b, c, d = sorted(dataplane.gateways())
    with on_one_cpu():
        old_cycle = expected_ports(dataplane, 4)
        assert send(dataplane, 1) == [a]
        with rebuild_held(dataplane):
            assert dataplane.run(P.registration4(b, 0))[0] == XDP_DROP
            state = dataplane.state()
            assert state.built_version != state.version  # the change is not published
            before = dataplane.counters()
            got = send_or_none(dataplane, 5)
            assert got == pending_picks(old_cycle, {a, c, d}, 1, 5) == [c, c, d, a, c]
            after = dataplane.counters()
            assert after["service"] - before["service"] == 5
            assert after["no_gateway_passed"] == before["no_gateway_passed"]
        # released: the next datagram publishes the new schedule, which starts from its beginning
        check_sequence(dataplane, 7)


@pytest.mark.kernel
def test_pending_rebuild_keeps_the_old_order_for_live_gateways(dataplane: Dataplane) -> None:
    register(dataplane, [5, 1, 1], by_packet=False)
    with on_one_cpu():
        old = expected_ports(dataplane, 30)
        assert send(dataplane, 3) == old[:3]
        with rebuild_held(dataplane):
            dataplane.instance.control(CtlOp.SET_WEIGHT, port=FIRST_GATEWAY_PORT + 1, weight=9)
            dataplane.instance.control(CtlOp.ADD_STATIC, port=20000, weight=50)
            assert send(dataplane, 12) == old[3:15]  # weight change and newcomer wait for the rebuild
        check_sequence(dataplane, 30)


@pytest.mark.kernel
def test_pending_rebuild_wraps_to_the_start_of_the_cycle(dataplane: Dataplane) -> None:
    register(dataplane, [1, 1, 1], by_packet=True)
    a, b, c = sorted(dataplane.gateways())
    with on_one_cpu():
        old_cycle = expected_ports(dataplane, 3)
        assert send(dataplane, 2) == [a, b]
        with rebuild_held(dataplane):
            assert dataplane.run(P.registration4(c, 0))[0] == XDP_DROP
            got = send_or_none(dataplane, 4)
        assert got == pending_picks(old_cycle, {a, b}, 2, 4) == [a, a, b, a]
