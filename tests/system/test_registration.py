"""The registration protocol, through real sockets in a namespace and the real CLI, in both
modes: in the kernel (`ebpflb load`: XDP consumes registration datagrams) and in user space
(`ebpflb run -u`: the process receives them and hands them to the kernel's control program).
Every test asserts the same outcome and the same counters in both modes."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Callable, Iterator, Optional

import pytest

from ebpflb.bpf.layout import MAX_GATEWAYS, RejectReason
from ebpflb.dataplane import Instance

from ..netns import NetNS, sh
from ..traffic import (
    LOOPBACK,
    REG_PORT,
    SERVICE_PORT,
    Gateway,
    Sender,
    cli_ok,
    family,
    gateways,
    gateways_json,
    wait_until,
)
from .test_run_mode import RunProcess

pytestmark = pytest.mark.kernel

MODES = ["kernel", "userspace"]
REASONS = [r.name.lower() for r in RejectReason]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def balancer(
    ns: NetNS, pin_path: str, mode: str, *options: str, interfaces: tuple[str, ...] = ("lo",)
) -> Iterator[None]:
    """The instance under test: loaded (kernel registrations) or a `run -u` process."""
    if mode == "kernel":
        cli_ok(ns, "load", *interfaces, "--pin-path", pin_path, *options)
        yield
        return
    with RunProcess(ns, "-u", *options, *interfaces, "--pin-path", pin_path) as run:
        run.started()
        yield
        assert run.stop() == 0, run.output()
        assert "Traceback" not in run.output()


def counters(pin_path: str) -> dict[str, int]:
    c = Instance(pin_path).snapshot().counters
    values = {"accepted": int(c.reg_accepted), "expired": int(c.expired)}
    values.update({r.name.lower(): int(c.reg_rejected[r]) for r in RejectReason})
    return values


def expect_counters(pin_path: str, timeout: float = 5.0, **expected: int) -> dict[str, int]:
    """Waits until the registration counters are exactly `expected` (unnamed ones 0)."""
    want = {"accepted": 0, "expired": 0, **{r: 0 for r in REASONS}, **expected}
    got = wait_until(lambda: counters(pin_path) == want and counters(pin_path), timeout) or counters(pin_path)
    assert got == want
    return got


def table(pin_path: str) -> dict[int, tuple[int, int, bool]]:
    """port -> (weight, slot, static)."""
    return {g.port: (g.weight, g.slot, g.is_static) for g in Instance(pin_path).snapshot().gateways}


def age_of(pin_path: str, port: int) -> float:
    return next(g.age_s for g in Instance(pin_path).snapshot().gateways if g.port == port)


def send_raw(
    version: int, payload: bytes, source: Optional[tuple[str, int]] = None, target: Optional[str] = None
) -> int:
    """A registration datagram with any payload, from `source` (default: loopback, any port)."""
    with socket.socket(family(version), socket.SOCK_DGRAM) as sock:
        sock.bind(source or (LOOPBACK[version], 0))
        sock.sendto(payload, (target or LOOPBACK[version], REG_PORT))
        return sock.getsockname()[1]


def poke(version: int = 4) -> None:
    """One service datagram: in kernel mode, expiry is noticed on the packet path."""
    with socket.socket(family(version), socket.SOCK_DGRAM) as sock:
        sock.sendto(b"poke", (LOOPBACK[version], SERVICE_PORT))


@pytest.mark.parametrize("version", [4, 6])
def test_accepted_registration(netns: NetNS, pin_path: str, mode: str, version: int) -> None:
    with (
        balancer(netns, pin_path, mode),
        netns.entered(),
        Gateway(version) as gw,
        Sender(version, LOOPBACK[version]) as s,
    ):
        gw.register(7)
        expect_counters(pin_path, accepted=1)
        assert table(pin_path) == {gw.port: (7, 0, False)}
        assert age_of(pin_path, gw.port) < 2.0
        s.send(1)
        assert wait_until(lambda: gw.drain() >= 0 and gw.count == 1, 5.0)
        rows = gateways_json(netns, pin_path)
        assert rows[gw.port]["packets"] == 1 and rows[gw.port]["weight"] == 7
        assert Instance(pin_path).snapshot().state.config.userspace_reg == (mode == "userspace")


def test_heartbeat_refreshes_age_and_keeps_the_gateway(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode, "-e", "1.5"), netns.entered(), Gateway() as gw:
        gw.register(4)
        expect_counters(pin_path, accepted=1)
        for beat in range(2, 6):  # 2 s of heartbeats every 0.5 s: longer than the expiry time
            time.sleep(0.5)
            poke()
            assert age_of(pin_path, gw.port) >= 0.45
            gw.register(4)
            expect_counters(pin_path, accepted=beat)
            assert age_of(pin_path, gw.port) < 0.3
        assert table(pin_path) == {gw.port: (4, 0, False)}


def test_weight_change(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode), netns.entered(), gateways(2) as gws, Sender(4, LOOPBACK[4]) as s:
        gws[0].register(3)
        gws[1].register(1)
        expect_counters(pin_path, accepted=2)
        gws[0].register(1)
        expect_counters(pin_path, accepted=3)
        assert table(pin_path) == {gws[0].port: (1, 0, False), gws[1].port: (1, 1, False)}
        s.send(4)  # a changed table restarts the schedule: 1:1 now
        assert wait_until(lambda: sum(g.drain() >= 0 and g.count for g in gws) == 4, 5.0)
        assert [g.count for g in gws] == [2, 2]


def test_weight_zero_removes(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode), netns.entered(), gateways(2) as gws:
        gws[0].register(5)
        expect_counters(pin_path, accepted=1)
        gws[0].register(0)
        expect_counters(pin_path, accepted=2)
        assert table(pin_path) == {}
        gws[1].register(0)  # nothing to remove: changes nothing, is not an error
        expect_counters(pin_path, accepted=3)
        gws[1].register(2)  # the released slot is reused
        expect_counters(pin_path, accepted=4)
        assert table(pin_path) == {gws[1].port: (2, 0, False)}


def test_expiry(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode, "-e", "1"), netns.entered(), Gateway() as gw:
        gw.register(2)
        expect_counters(pin_path, accepted=1)
        registered = time.monotonic()
        time.sleep(0.6)
        poke()
        assert table(pin_path) == {gw.port: (2, 0, False)}

        def expired() -> bool:
            poke()
            return not table(pin_path)

        assert wait_until(expired, 4.0, interval=0.05)
        took = time.monotonic() - registered
        assert 0.95 <= took <= 2.0, took
        expect_counters(pin_path, accepted=1, expired=1)


@pytest.fixture
def veth_pair(netns: NetNS, netns_factory: Callable[[str], NetNS]) -> NetNS:
    """veth0 in the test namespace (10.201.0.1, fd00:201::1) wired to veth1 in a peer namespace
    (10.201.0.2, fd00:201::2). Deleting the namespaces deletes the pair."""
    peer = netns_factory("peer")
    sh("ip", "-n", netns.name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", peer.name)
    for ns, dev, last in ((netns, "veth0", 1), (peer, "veth1", 2)):
        ns.ip("addr", "add", f"10.201.0.{last}/24", "dev", dev)
        ns.ip("addr", "add", f"fd00:201::{last}/64", "dev", dev, "nodad")
        ns.ip("link", "set", dev, "up")
    return peer


def test_rejects_non_loopback_sources(netns: NetNS, veth_pair: NetNS, pin_path: str, mode: str) -> None:
    peer = veth_pair
    with balancer(netns, pin_path, mode, interfaces=("veth0", "lo")):
        weight = struct.pack("!I", 5)
        with peer.entered():  # arrives on veth0, not on lo
            send_raw(4, weight, ("10.201.0.2", 0), "10.201.0.1")
            send_raw(6, weight, ("fd00:201::2", 0), "fd00:201::1")
        expect_counters(pin_path, not_loopback=2)
        with netns.entered():  # arrives on lo, but from a non-loopback address
            send_raw(4, weight, ("10.201.0.1", 0), LOOPBACK[4])
            send_raw(6, weight, ("fd00:201::1", 0), LOOPBACK[6])
        expect_counters(pin_path, not_loopback=4)
        assert table(pin_path) == {}


@pytest.mark.parametrize("version", [4, 6])
def test_rejects_short_payloads(netns: NetNS, pin_path: str, mode: str, version: int) -> None:
    delivered = "UdpInDatagrams" if version == 4 else "Udp6InDatagrams"
    with balancer(netns, pin_path, mode):
        before = netns.nstat([delivered])[delivered]
        with netns.entered():
            send_raw(version, b"")
            send_raw(version, b"\x00\x00\x07")
        expect_counters(pin_path, short_payload=2)
        assert table(pin_path) == {}
        # the kernel path consumes them in XDP; with -u they reach the run process's socket
        assert netns.nstat([delivered])[delivered] - before == (2 if mode == "userspace" else 0)


@pytest.mark.parametrize("version", [4, 6])
def test_weight_range_and_bytes_after_the_weight(netns: NetNS, pin_path: str, mode: str, version: int) -> None:
    with balancer(netns, pin_path, mode), netns.entered(), Gateway(version) as gw:
        for weight in (65536, 0xFFFFFFFF):
            gw.sock.sendto(struct.pack("!I", weight) + b"ignored", (LOOPBACK[version], REG_PORT))
        expect_counters(pin_path, weight_range=2)
        assert table(pin_path) == {}
        gw.sock.sendto(struct.pack("!I", 65535) + b"\xff" * 100, (LOOPBACK[version], REG_PORT))
        expect_counters(pin_path, weight_range=2, accepted=1)
        gw.sock.sendto(struct.pack("!I", 7) + b"\x00\x01\x02", (LOOPBACK[version], REG_PORT))
        expect_counters(pin_path, weight_range=2, accepted=2)
        assert table(pin_path) == {gw.port: (7, 0, False)}


def test_table_full(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode), netns.entered(), gateways(MAX_GATEWAYS + 1) as gws:
        for start in range(0, MAX_GATEWAYS, 64):  # in batches, so no socket queue can overflow
            for gw in gws[start : start + 64]:
                gw.register(1)
            expect_counters(pin_path, accepted=start + 64)
        last = gws[MAX_GATEWAYS]
        last.register(1)
        expect_counters(pin_path, accepted=MAX_GATEWAYS, table_full=1)
        full = table(pin_path)
        assert len(full) == MAX_GATEWAYS and last.port not in full
        freed_slot = full[gws[17].port][1]
        gws[17].register(0)
        last.register(9)
        expect_counters(pin_path, accepted=MAX_GATEWAYS + 2, table_full=1)
        after = table(pin_path)
        assert len(after) == MAX_GATEWAYS and gws[17].port not in after
        assert after[last.port] == (9, freed_slot, False)
