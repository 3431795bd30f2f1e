"""System tests of balancing: the real CLI loads the shipped object on lo inside a fresh
namespace; gateways are real UDP sockets that register themselves; counts are exact.

Over 300 lines: one scenario per test, each a few lines of setup around exact counts;
splitting them by theme would scatter the shared fixtures of this file."""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Iterator

import pytest

from ebpflb.dataplane import Instance
from ebpflb.scheduler import sequence

from ..netns import NetNS
from ..traffic import (
    LOOPBACK,
    SERVICE_PORT,
    Gateway,
    Sender,
    cli_ok,
    drain_all,
    gateways,
    gateways_json,
    seq_of,
    status_json,
    wait_for_total,
    wait_until,
    weights_in_slot_order,
)

pytestmark = pytest.mark.kernel

WEIGHTS = [11, 23, 37, 41, 53, 73]  # sum 238, gcd 1: one cycle is 238 datagrams
UDP_COUNTERS = ["UdpNoPorts", "UdpRcvbufErrors", "Udp6NoPorts", "Udp6RcvbufErrors"]


def load(ns: NetNS, pin_path: str, *options: str) -> None:
    cli_ok(ns, "load", "lo", "--pin-path", pin_path, *options)


def live_ports(pin_path: str) -> set[int]:
    """Ports in the gateway table, read straight from the pinned map (cheap enough to poll)."""
    return {g.port for g in Instance(pin_path).snapshot().gateways}


def register_all(gws: list[Gateway], weights: list[int], pin_path: str) -> None:
    for gw, weight in zip(gws, weights):
        gw.register(weight)
    expected = {gw.port for gw, w in zip(gws, weights) if w}
    assert wait_until(lambda: expected <= live_ports(pin_path), 2.0), "registrations did not show up"


def send_cycles_and_collect(sender: Sender, gws: list[Gateway], cycles: int, cycle_len: int) -> list[bytes]:
    """Sends whole cycles from one CPU and waits until every datagram reached a gateway socket."""
    before = sum(g.count for g in gws)
    sent = sender.send(cycles * cycle_len)
    held = wait_for_total(gws, before + len(sent))
    assert held == before + len(sent), f"gateways hold {held - before} of {len(sent)} datagrams"
    return sent


def assert_no_udp_losses(ns: NetNS) -> None:
    """Nothing went to a closed port and no gateway queue overflowed."""
    assert ns.nstat(UDP_COUNTERS) == {name: 0 for name in UDP_COUNTERS}


@pytest.mark.parametrize("version", [4, 6])
def test_exact_counts_follow_weights(netns: NetNS, pin_path: str, version: int) -> None:
    load(netns, pin_path)
    cycles = 3
    with netns.entered(), gateways(len(WEIGHTS), version) as gws, Sender(version, LOOPBACK[version]) as sender:
        register_all(gws, WEIGHTS, pin_path)
        sent = send_cycles_and_collect(sender, gws, cycles, sum(WEIGHTS))

    assert {gw.port: gw.count for gw in gws} == {gw.port: cycles * w for gw, w in zip(gws, WEIGHTS)}
    rows = gateways_json(netns, pin_path)
    assert {port: row["packets"] for port, row in rows.items()} == {gw.port: gw.count for gw in gws}
    assert {port: row["bytes"] for port, row in rows.items()} == {
        gw.port: sum(8 + len(p) for p in gw.received) for gw in gws
    }
    # The order too: datagram n went to the slot the reference model picks n-th.
    slot_of_port = {port: row["slot"] for port, row in rows.items()}
    receiver_of_seq = {seq_of(p): slot_of_port[gw.port] for gw in gws for p in gw.received}
    assert [receiver_of_seq[seq_of(p)] for p in sent] == sequence(weights_in_slot_order(rows), len(sent))
    # Payloads arrive intact, each exactly once.
    assert sorted(p for gw in gws for p in gw.received) == sorted(sent)

    counters = status_json(netns, pin_path)["counters"]
    assert counters["service"] == len(sent)
    assert counters["no_gateway_passed"] == counters["no_gateway_dropped"] == 0
    assert counters["registrations_accepted"] == len(WEIGHTS)
    assert_no_udp_losses(netns)


def test_heartbeat_with_new_weight_changes_shares(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    new_weights = [73, 53, 41, 37, 23, 11]
    with netns.entered(), gateways(len(WEIGHTS)) as gws, Sender(4, LOOPBACK[4]) as sender:
        register_all(gws, WEIGHTS, pin_path)
        # two cycles and part of a third: the new schedule must restart the cursor mid-cycle
        send_cycles_and_collect(sender, gws, 1, 2 * sum(WEIGHTS) + 100)
        first = [gw.count for gw in gws]
        rows = gateways_json(netns, pin_path)
        slots = [rows[gw.port]["slot"] for gw in gws]
        partial = Counter(sequence(weights_in_slot_order(rows), 100))
        assert first == [2 * w + partial[slot] for w, slot in zip(WEIGHTS, slots)]

        for gw, weight in zip(gws, new_weights):
            gw.register(weight)
        assert wait_until(
            lambda: (
                {g.port: g.weight for g in Instance(pin_path).snapshot().gateways}
                == {gw.port: w for gw, w in zip(gws, new_weights)}
            ),
            2.0,
        )
        send_cycles_and_collect(sender, gws, 3, sum(new_weights))

    assert [gw.count - before for gw, before in zip(gws, first)] == [3 * w for w in new_weights]
    rows = gateways_json(netns, pin_path)
    assert {p: r["packets"] for p, r in rows.items()} == {gw.port: gw.count for gw in gws}
    assert {p: r["weight"] for p, r in rows.items()} == {gw.port: w for gw, w in zip(gws, new_weights)}
    assert_no_udp_losses(netns)


def test_weight_zero_removes_at_once(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
        register_all(gws, [2, 3, 5], pin_path)
        send_cycles_and_collect(sender, gws, 1, 10)
        removed, kept = gws[1], [gws[0], gws[2]]
        removed.register(0)
        # no heartbeat, no expiry, no traffic in between: the removal itself must be visible
        assert removed.port not in live_ports(pin_path)
        assert removed.port not in gateways_json(netns, pin_path)
        held_before = removed.count
        kept_before = [gw.count for gw in kept]
        send_cycles_and_collect(sender, kept, 4, 7)
        time.sleep(0.02)
        removed.drain()

    assert removed.count == held_before, "a removed gateway still received datagrams"
    assert [gw.count - b for gw, b in zip(kept, kept_before)] == [4 * 2, 4 * 5]
    assert status_json(netns, pin_path)["gateways"] == 2
    assert_no_udp_losses(netns)


@contextlib.contextmanager
def heartbeating(gw: Gateway, weight: int, every: float = 0.1) -> Iterator[None]:
    """Keeps a gateway registered from a thread for the block, however slow the checks in it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            gw.register(weight)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_gateway_that_stops_heartbeating_expires(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path, "-e", "1")
    with netns.entered(), gateways(2) as (silent, alive), Sender(4, LOOPBACK[4]) as sender:
        last_heartbeat = time.monotonic()
        register_all([silent, alive], [1, 1], pin_path)
        with heartbeating(alive, 1):

            def silent_gone() -> bool:
                sender.send(10, cpu=None)
                drain_all([silent, alive])
                return silent.port not in live_ports(pin_path)

            assert wait_until(silent_gone, 4.0, interval=0.1), "the silent gateway never expired"
            expired_after = time.monotonic() - last_heartbeat
            # registrations are stamped with the coarse clock, up to a tick (<= 10 ms) behind
            assert expired_after >= 0.99, f"expired after {expired_after:.3f} s, before the 1 s expiry"
            silent_before, alive_before = silent.count, alive.count
            sender.send(50, cpu=None)
            wait_for_total([alive], alive_before + 50)
            time.sleep(0.02)
            silent.drain()
            assert silent.count == silent_before, "an expired gateway still received datagrams"
            assert alive.count == alive_before + 50
            assert set(gateways_json(netns, pin_path)) == {alive.port}
            assert status_json(netns, pin_path)["counters"]["expired"] == 1
    assert_no_udp_losses(netns)


def test_static_gateway_never_expires(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path, "-e", "1")
    with netns.entered(), gateways(2) as (static, dynamic), Sender(4, LOOPBACK[4]) as sender:
        cli_ok(netns, "gateways", "add", str(static.port), "--weight", "3", "--pin-path", pin_path)
        register_all([dynamic], [1], pin_path)

        def dynamic_gone() -> bool:
            sender.send(4, cpu=None)
            drain_all([static, dynamic])
            return dynamic.port not in live_ports(pin_path)

        assert wait_until(dynamic_gone, 4.0, interval=0.1), "the dynamic gateway never expired"
        time.sleep(1.2)  # another full expiry period with the static gateway never heard from
        before = static.count
        send_cycles_and_collect(sender, [static, dynamic], 1, 40)

    assert static.count == before + 40
    rows = gateways_json(netns, pin_path)
    assert list(rows) == [static.port]
    assert rows[static.port]["static"] is True and rows[static.port]["weight"] == 3
    assert rows[static.port]["age_s"] is None  # no age: it never expires
    assert_no_udp_losses(netns)


def test_256_gateways_and_the_257th_is_refused(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    weights = [1 + i % 4 for i in range(256)]  # sum 640, gcd 1
    with netns.entered(), gateways(257) as gws, Sender(4, LOOPBACK[4]) as sender:
        register_all(gws[:256], weights, pin_path)
        extra = gws[256]
        extra.register(1)
        sent = send_cycles_and_collect(sender, gws, 2, sum(weights))
        time.sleep(0.02)
        extra.drain()

    assert extra.count == 0
    assert [gw.count for gw in gws[:256]] == [2 * w for w in weights]
    assert len(sent) == 2 * 640
    rows = gateways_json(netns, pin_path)
    assert set(rows) == {gw.port for gw in gws[:256]}
    assert {p: r["packets"] for p, r in rows.items()} == {gw.port: gw.count for gw in gws[:256]}
    status = status_json(netns, pin_path)
    assert status["gateways"] == 256
    assert status["counters"]["registrations_rejected"]["table_full"] == 1
    assert status["counters"]["registrations_accepted"] == 256
    assert_no_udp_losses(netns)


@pytest.mark.parametrize("drop", [False, True], ids=["default-passes", "drop-without-gateway"])
def test_datagrams_without_gateway(netns: NetNS, pin_path: str, drop: bool) -> None:
    load(netns, pin_path, *(["--drop-without-gateway"] if drop else []))
    with netns.entered(), Gateway(4, port=SERVICE_PORT) as service, Sender(4, LOOPBACK[4]) as sender:
        sender.send(100, cpu=None)
        wait_until(lambda: service.drain() >= 0 and service.count >= 100, 0.5)
        time.sleep(0.02)
        service.drain()

    counters = status_json(netns, pin_path)["counters"]
    assert status_json(netns, pin_path)["config"]["drop_without_gateway"] is drop
    if drop:
        assert (service.count, counters["no_gateway_dropped"], counters["no_gateway_passed"]) == (0, 100, 0)
    else:
        assert (service.count, counters["no_gateway_dropped"], counters["no_gateway_passed"]) == (100, 0, 100)
        assert sorted(service.received) == sorted(sender.sent)
    assert counters["service"] == 0
    assert_no_udp_losses(netns)


def test_second_load_is_refused_and_changes_nothing(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    with netns.entered(), gateways(2) as gws:
        register_all(gws, [1, 2], pin_path)
    before = (status_json(netns, pin_path), gateways_json(netns, pin_path))
    again = netns.ebpflb("load", "lo", "-e", "5", "--port", "4000", "--pin-path", pin_path)
    assert again.returncode != 0
    assert len(again.stderr.strip().splitlines()) == 1 and "already loaded" in again.stderr
    after = (status_json(netns, pin_path), gateways_json(netns, pin_path))
    for rows in (before[1], after[1]):
        for row in rows.values():
            row.pop("age_s")
    assert after == before


def test_state_survives_a_control_plane_restart(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    with netns.entered(), gateways(len(WEIGHTS)) as gws, Sender(4, LOOPBACK[4]) as sender:
        register_all(gws, WEIGHTS, pin_path)
        send_cycles_and_collect(sender, gws, 1, sum(WEIGHTS))

        # a crashed controller: the program is detached out of band, the pins stay
        netns.ip("link", "set", "dev", "lo", "xdpgeneric", "off")
        assert status_json(netns, pin_path)["interfaces"] == []
        with Gateway(4, port=SERVICE_PORT) as service:
            sender.send(20)  # nothing balances now: straight to whoever listens on the port
            assert wait_until(lambda: service.drain() >= 0 and service.count == 20, 2.0)
        load(netns, pin_path)

        assert status_json(netns, pin_path)["interfaces"] == [{"name": "lo", "mode": "skb"}]
        rows = gateways_json(netns, pin_path)
        assert {p: (r["weight"], r["packets"]) for p, r in rows.items()} == {
            gw.port: (w, w) for gw, w in zip(gws, WEIGHTS)
        }
        send_cycles_and_collect(sender, gws, 2, sum(WEIGHTS))

    assert [gw.count for gw in gws] == [3 * w for w in WEIGHTS]
    rows = gateways_json(netns, pin_path)
    assert {p: r["packets"] for p, r in rows.items()} == {gw.port: 3 * w for gw, w in zip(gws, WEIGHTS)}
    counters = status_json(netns, pin_path)["counters"]
    assert counters["service"] == 3 * sum(WEIGHTS)
    assert counters["registrations_accepted"] == len(WEIGHTS)
    assert_no_udp_losses(netns)


def deregister_and_close(gw: Gateway, pin_path: str) -> int:
    """Removes a gateway (weight 0) and closes its socket the way a careful gateway would;
    returns how many datagrams still arrived once its removal had settled."""
    gw.register(0)
    assert wait_until(lambda: gw.port not in live_ports(pin_path), 1.0)
    time.sleep(0.005)  # a datagram rewritten just before the removal is delivered by now
    gw.drain()
    settled = gw.count
    time.sleep(0.005)
    gw.drain()
    gw.close()
    return gw.count - settled


def test_churn_under_traffic_never_targets_a_dead_port(netns: NetNS, pin_path: str) -> None:
    """Gateways come, change weight, go (weight 0) and close their sockets while a sender
    streams: the kernel's UdpNoPorts proves no datagram went to a port without a socket, and
    every datagram sent is accounted for as received by a gateway or passed without one."""
    load(netns, pin_path)
    rng = random.Random(2152)
    count, rate = 12000, 8000.0
    live: dict[int, Gateway] = {}
    retired: list[Gateway] = []
    late: dict[int, int] = {}  # datagrams a gateway received after its removal had settled
    with netns.entered(), Gateway(4, port=SERVICE_PORT) as fallback:
        for _ in range(4):
            gw = Gateway(4)
            live[gw.port] = gw
            gw.register(rng.randint(1, 50))
        sender = netns.popen(
            sys.executable,
            "-m",
            "tests.traffic",
            "stream",
            "--count",
            str(count),
            "--rate",
            str(rate),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            operations = Counter[str]()
            while sender.poll() is None:
                action = rng.choice(["add", "weight", "remove"] if len(live) < 12 else ["weight", "remove"])
                if action == "add" or not live:
                    gw = Gateway(4)
                    live[gw.port] = gw
                    gw.register(rng.randint(1, 50))
                    operations["add"] += 1
                elif action == "weight":
                    rng.choice(list(live.values())).register(rng.randint(1, 50))
                    operations["weight"] += 1
                else:
                    gw = live.pop(rng.choice(list(live)))
                    late[gw.port] = deregister_and_close(gw, pin_path)
                    retired.append(gw)
                    operations["remove"] += 1
                drain_all([fallback, *live.values()])
                time.sleep(0.005)
            out, err = sender.communicate(timeout=10)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        assert sender.returncode == 0, err
        sent = int(out.strip())
        everyone = [fallback, *live.values(), *retired]
        held = wait_for_total([fallback, *live.values()], sent - sum(g.count for g in retired))
        held += sum(g.count for g in retired)
        for gw in live.values():
            gw.close()

    assert sent == count
    assert min(operations.values()) >= 5, f"too little churn to mean anything: {dict(operations)}"
    assert netns.nstat(UDP_COUNTERS) == {name: 0 for name in UDP_COUNTERS}, "a datagram reached a port without a socket"
    assert held == sent, f"{sent} sent, {held} received by gateways and the service port"
    assert sorted(seq_of(p) for g in everyone for p in g.received) == list(range(sent))
    assert all(n == 0 for n in late.values()), f"removed gateways still received datagrams: {late}"
    counters = status_json(netns, pin_path)["counters"]
    assert counters["no_gateway_passed"] == fallback.count
    assert counters["service"] == sent - fallback.count
    rows = gateways_json(netns, pin_path)
    assert {p: r["packets"] for p, r in rows.items()} == {p: g.count for p, g in live.items()}


def test_expired_gateway_is_not_listed_even_without_traffic(netns: NetNS, pin_path: str) -> None:
    """Listing sweeps first: an idle instance never shows a gateway past its expiry."""
    load(netns, pin_path, "-e", "1")
    with netns.entered(), Gateway(4) as silent:
        register_all([silent], [1], pin_path)
        time.sleep(1.3)
        assert silent.port not in gateways_json(netns, pin_path)
        status = status_json(netns, pin_path)
        assert (status["gateways"], status["counters"]["expired"]) == (0, 1)
