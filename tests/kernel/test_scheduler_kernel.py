"""The scheduler in the kernel against the Python reference model (tests/unit/test_scheduler_model.py).

Registers gateways, sends datagrams through BPF_PROG_TEST_RUN on one CPU and compares the output
ports datagram for datagram with the model (`scheduler.Cpu`), also across weight changes and
removals (a CPU keeps its place in the cycle), and checks shares while a gateway is re-weighted
every second datagram.

Over 300 lines: the kernel side of every model property, each next to the harness it needs
(settling, pending builds, change-rate windows)."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator, Sequence

import pytest

from ebpflb import scheduler
from ebpflb.bpf.layout import MAX_GATEWAYS, MAX_WEIGHT, SCHED_SIZE, CtlOp

from .. import packets as P
from ..dataplane import XDP_DROP, XDP_PASS, Dataplane, add_static_owned_by_loopback, on_one_cpu
from ..unit.test_scheduler_model import WINDOW, base_table, reweight, share_errors

pytestmark = pytest.mark.kernel

# ---------------------------------------------------------------- the kernel against the model

SERVICE_V4 = P.udp4(P.SERVICE_PORT, b"scheduled")
SERVICE_V6 = P.udp6(P.SERVICE_PORT, b"scheduled")
PORT_OFFSET_V4 = 14 + 20 + 2  # Ethernet, IPv4 without options, UDP source port
PORT_OFFSET_V6 = 14 + 40 + 2
FIRST_GATEWAY_PORT = 10000


def send(dataplane: Dataplane, count: int, ipv6: bool = False) -> list[int]:
    """Output ports of `count` service datagrams, on whatever CPU this thread is pinned to."""
    packet, offset = (SERVICE_V6, PORT_OFFSET_V6) if ipv6 else (SERVICE_V4, PORT_OFFSET_V4)
    ports = []
    for _ in range(count):
        verdict, out = dataplane.run(packet)
        assert verdict == XDP_PASS
        ports.append(int.from_bytes(out[offset : offset + 2], "big"))
    return ports


def table_weights(dataplane: Dataplane) -> tuple[list[int], dict[int, int]]:
    """The live table as the model takes it: weights in slot order, and slot -> port."""
    by_slot = {slot: (port, weight) for port, (slot, weight) in dataplane.gateways().items()}
    size = max(by_slot) + 1 if by_slot else 0
    return [by_slot[s][1] if s in by_slot else 0 for s in range(size)], {s: p for s, (p, _) in by_slot.items()}


class ModelCpu:
    """The model of the CPU this test is pinned to, fed every publication the kernel makes."""

    def __init__(self, dataplane: Dataplane, cpu: int) -> None:
        self.dataplane = dataplane
        self.model = scheduler.Cpu(cpu)
        self.ports: dict[int, int] = {}

    def published(self) -> None:
        """The kernel published a schedule for the current table (after a control operation)."""
        weights, self.ports = table_weights(self.dataplane)
        self.model.publish(weights)

    def take(self, count: int) -> list[int]:
        return [self.ports[slot] for slot in self.model.take(count)]


def settle(dataplane: Dataplane) -> None:
    """Completes a pending schedule build, as the CLI and `run` do (CTL_SWEEP)."""
    dataplane.instance.control(CtlOp.SWEEP)
    state = dataplane.state()
    assert state.sched_version == state.version


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
    settle(dataplane)
    assert len(dataplane.gateways()) == before + len(weights)


def set_weight(dataplane: Dataplane, port: int, weight: int, by_packet: bool) -> None:
    if by_packet:  # from the address that registered it (register: 127.0.0.1), its owner
        assert dataplane.run(P.registration4(port, weight))[0] == XDP_DROP
    else:
        dataplane.instance.control(CtlOp.SET_WEIGHT, port=port, weight=weight)
    settle(dataplane)


def datagrams_for(dataplane: Dataplane) -> int:
    """Past the longest possible schedule: every wrap back to the start is checked, and a
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

def first_difference(got: list[int], want: list[int]) -> str:
    for k, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            around = slice(max(0, k - 5), k + 5)
            return f"datagram {k}: port {a}, model {b}; got {got[around]}, want {want[around]}"
    return f"lengths {len(got)} and {len(want)}"


@pytest.mark.parametrize("name,weights", WEIGHT_SETS, ids=[name for name, _ in WEIGHT_SETS])
def test_kernel_follows_the_model(dataplane: Dataplane, name: str, weights: list[int]) -> None:
    by_packet = WEIGHT_SETS.index((name, weights)) % 2 == 0  # half register by datagram
    register(dataplane, weights, by_packet)
    count = datagrams_for(dataplane)
    with on_one_cpu() as cpu:
        model = ModelCpu(dataplane, cpu)
        model.published()
        got = send(dataplane, count, ipv6=by_packet)
    want = model.take(count)
    assert got == want, first_difference(got, want)


def check_sequence(dataplane: Dataplane, model: ModelCpu, count: int) -> None:
    got = send(dataplane, count)
    want = model.take(count)
    assert got == want, first_difference(got, want)


@pytest.mark.parametrize("by_packet", [True, False], ids=["by datagram", "by control op"])
def test_changes_keep_each_cpus_place(dataplane: Dataplane, by_packet: bool) -> None:
    rng = random.Random(17 + by_packet)
    register(dataplane, [rng.randint(1, 9) for _ in range(6)], by_packet)
    ports = sorted(dataplane.gateways())
    with on_one_cpu() as cpu:
        model = ModelCpu(dataplane, cpu)
        model.published()
        check_sequence(dataplane, model, 11)  # stop mid-cycle: the next schedule goes on from here

        for port, weight in [(ports[2], 13), (ports[4], 1), (ports[0], 0)]:  # the last leaves a hole in slot 0
            set_weight(dataplane, port, weight, by_packet)
            model.published()
            check_sequence(dataplane, model, 23)
        assert ports[0] not in dataplane.gateways()

        register(dataplane, [4], by_packet, first_port=20000)  # takes the freed slot 0
        assert dataplane.gateways()[20000] == (0, 4)
        model.published()
        check_sequence(dataplane, model, datagrams_for(dataplane))


def test_heartbeat_changes_nothing(dataplane: Dataplane) -> None:
    register(dataplane, [5, 1, 1], by_packet=True)
    with on_one_cpu() as cpu:
        model = ModelCpu(dataplane, cpu)
        model.published()
        rebuilds = dataplane.counters()["rebuilds"]
        first = send(dataplane, 3)
        assert dataplane.run(P.registration4(FIRST_GATEWAY_PORT + 1, 1))[0] == XDP_DROP
        rest = send(dataplane, 11)
    assert first + rest == model.take(14)
    assert dataplane.counters()["rebuilds"] == rebuilds


def test_cpus_keep_their_own_cursors_out_of_step(dataplane: Dataplane) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    register(dataplane, [5, 3, 2], by_packet=False)
    models = {}
    for cpu in cpus[:2]:
        models[cpu] = ModelCpu(dataplane, cpu)
        models[cpu].published()
    first, second = cpus[:2]
    with on_one_cpu(first):
        a = send(dataplane, 7)
    with on_one_cpu(second):
        b = send(dataplane, 4)
    with on_one_cpu(first):
        a += send(dataplane, 9)
    assert a == models[first].take(16)
    assert b == models[second].take(4)
    assert a[:4] != b  # not in step

    dataplane.instance.control(CtlOp.SET_WEIGHT, port=FIRST_GATEWAY_PORT, weight=1)
    for cpu in (second, first):
        models[cpu].published()
        with on_one_cpu(cpu):
            got = send(dataplane, 10)
        assert got == models[cpu].take(10)


# ---------------------------------------------------------------- a build that has not finished


@contextlib.contextmanager
def builder_held(dataplane: Dataplane) -> Iterator[None]:
    """Sets lb_state.building as if another CPU were in a build step, so changes stay
    unpublished and datagrams keep the published schedule; clears it after."""

    def set_building(value: int) -> None:
        state = dataplane.state()
        state.building = value
        dataplane.write_map("lb_state", 0, state)

    set_building(1)
    try:
        yield
    finally:
        set_building(0)


def test_pending_build_never_sends_to_a_gateway_that_left(dataplane: Dataplane) -> None:
    register(dataplane, [1, 1, 1, 1], by_packet=True)
    a, b, c, d = sorted(dataplane.gateways())
    with on_one_cpu() as cpu:
        model = ModelCpu(dataplane, cpu)
        model.published()
        old = model.take(40)
        assert send(dataplane, 1) == old[:1]
        with builder_held(dataplane):
            assert dataplane.run(P.registration4(b, 0))[0] == XDP_DROP
            assert dataplane.run(P.registration4(d, 0))[0] == XDP_DROP
            state = dataplane.state()
            assert state.sched_version != state.version  # the change is not published
            before = dataplane.counters()
            got = send(dataplane, 39)
            after = dataplane.counters()
        # entries of live gateways keep their place; the others go to a live gateway instead
        assert all(g == o for g, o in zip(got, old[1:]) if o in (a, c))
        assert set(got) == {a, c}
        assert after["service"] - before["service"] == 39
        assert after["no_gateway_passed"] == before["no_gateway_passed"]
        assert after["stale_picks"] - before["stale_picks"] == sum(1 for o in old[1:] if o in (b, d))
        settle(dataplane)
        model.published()
        check_sequence(dataplane, model, 20)


def test_pending_build_balances_when_every_scheduled_gateway_left(dataplane: Dataplane) -> None:
    """The old schedule names only gateways that left and the new one is not built: the
    live list still balances every datagram."""
    register(dataplane, [1, 1], by_packet=True)
    a, b = sorted(dataplane.gateways())
    with on_one_cpu(), builder_held(dataplane):
        for port in (a, b):
            assert dataplane.run(P.registration4(port, 0))[0] == XDP_DROP
        for port in (30000, 30001):
            assert dataplane.run(P.registration4(port, 1))[0] == XDP_DROP
        before = dataplane.counters()
        got = send(dataplane, 10)
        assert set(got) == {30000, 30001}
        assert dataplane.counters()["no_gateway_passed"] == before["no_gateway_passed"]


def test_datagrams_complete_a_build_within_a_few_jiffies(dataplane: Dataplane) -> None:
    """No control program: service datagrams take the build a bounded step each."""
    register(dataplane, [3, 1], by_packet=True)
    rebuilds = dataplane.counters()["rebuilds"]
    assert dataplane.run(P.registration4(FIRST_GATEWAY_PORT + 1, 2))[0] == XDP_DROP
    with on_one_cpu():
        for _ in range(200):
            send(dataplane, 1)
            state = dataplane.state()
            if state.sched_version == state.version:
                break
            time.sleep(0.001)
    state = dataplane.state()
    assert state.sched_version == state.version, "datagrams did not finish the build"
    assert dataplane.counters()["rebuilds"] == rebuilds + 1


# ---------------------------------------------------------------- shares while weights change, in the kernel

KERNEL_DATAGRAMS = WINDOW + 10_000  # 11 windows: about 25 s for all four cases


@pytest.mark.parametrize("by_packet", [True, False], ids=["by datagram", "by control op"])
@pytest.mark.parametrize("gateways", [64, 256])
def test_kernel_shares_hold_when_a_weight_changes_every_second_datagram(
    dataplane: Dataplane, gateways: int, by_packet: bool
) -> None:
    """By datagram, changes are built over the following datagrams and published at most once
    per jiffy; by control operation, every change is published at once (the worst case).
    The gateways are registered from 127.0.0.1 and made static, so that none expires during
    the run and the datagrams of their owner re-weight them."""
    base = base_table(gateways)
    for port, weight in base.items():
        add_static_owned_by_loopback(dataplane.instance, port, weight)
    settle(dataplane)
    assert {p: w for p, (_, w) in dataplane.gateways().items()} == base
    ports: list[int] = []
    tables: list[dict[int, int]] = []
    interned: dict[tuple[int, ...], dict[int, int]] = {}
    weights = base
    with on_one_cpu():
        for n in range(KERNEL_DATAGRAMS):
            if n and n % 2 == 0:
                weights = reweight(weights, base, n // 2)
                weights = interned.setdefault(tuple(weights.values()), weights)
                port = sorted(base)[(n // 2) % 4]
                if by_packet:
                    assert dataplane.run(P.registration4(port, weights[port]))[0] == XDP_DROP
                else:
                    dataplane.instance.control(CtlOp.SET_WEIGHT, port=port, weight=weights[port])
            ports.extend(send(dataplane, 1))
            tables.append(weights)
    counters = dataplane.counters()
    assert counters["service"] == KERNEL_DATAGRAMS and counters["no_gateway_passed"] == 0
    assert counters["rebuilds"] > 100  # the schedule really changed underneath
    worst, starved = share_errors(ports, tables)
    print(f"{gateways} gateways: worst share error {worst:.3f} points over {WINDOW}-datagram windows")
    assert starved == 0
    assert worst <= 0.5, f"share off by {worst:.3f} points"
