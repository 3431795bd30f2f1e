"""Who may change a gateway: the source address that registered it, and nobody else by
datagram; which ports may register at all (`--gateway-ports`). Real sockets in a namespace,
the real CLI, both registration modes (kernel and `run -u`)."""

from __future__ import annotations

import socket
import struct

import pytest

from ..netns import NetNS
from ..traffic import LOOPBACK, REG_PORT, Gateway, cli_ok, family, status_json
from .test_registration import balancer, expect_counters, table
from .test_registration import mode as mode  # noqa: F401  (the fixture: kernel and user-space registrations)

pytestmark = pytest.mark.kernel


def register_from(address: str, port: int, weight: int) -> None:
    """A registration for `port` sent from `address`:`port`, as a spoofer on the host would."""
    version = 6 if ":" in address else 4
    with socket.socket(family(version), socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        sock.sendto(struct.pack("!I", weight), (LOOPBACK[version], REG_PORT))


@pytest.mark.parametrize(
    "version, spoofer",
    [(4, "127.0.0.2"), (4, "::1"), (6, "127.0.0.1")],
    ids=["v4-other-loopback", "v4-from-v6", "v6-from-v4"],
)
def test_another_address_can_neither_reweight_nor_remove(
    netns: NetNS, pin_path: str, mode: str, version: int, spoofer: str
) -> None:
    with balancer(netns, pin_path, mode), netns.entered(), Gateway(version) as gw:
        gw.register(5)
        expect_counters(pin_path, accepted=1)
        register_from(spoofer, gw.port, 9)
        register_from(spoofer, gw.port, 0)
        expect_counters(pin_path, accepted=1, not_owner=2)
        assert table(pin_path) == {gw.port: (5, 0, False)}
        gw.register(7)  # the owner still can
        expect_counters(pin_path, accepted=2, not_owner=2)
        assert table(pin_path) == {gw.port: (7, 0, False)}
        status = status_json(netns, pin_path)
        assert status["counters"]["registrations_rejected"]["not_owner"] == 2


def test_a_gateway_added_by_hand_belongs_to_root(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode), netns.entered():
        cli_ok(netns, "gateways", "add", "7001", "--weight", "3", "--pin-path", pin_path)
        register_from("127.0.0.1", 7001, 9)
        register_from("127.0.0.1", 7001, 0)
        expect_counters(pin_path, accepted=1, not_owner=2)  # accepted: the CLI's add
        assert table(pin_path) == {7001: (3, 0, True)}
        cli_ok(netns, "weights", "set", "7001", "4", "--pin-path", pin_path)
        assert table(pin_path) == {7001: (4, 0, True)}


def test_gateway_ports_bound_which_ports_may_register(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode, "--gateway-ports", "7000-7009"), netns.entered():
        for port in (6999, 7010, 7000, 7009):
            register_from("127.0.0.1", port, 2)
        expect_counters(pin_path, accepted=2, port_not_allowed=2)
        assert set(table(pin_path)) == {7000, 7009}
        cli_ok(netns, "gateways", "add", "80", "--weight", "1", "--pin-path", pin_path)  # root may add any port
        assert set(table(pin_path)) == {80, 7000, 7009}
        assert status_json(netns, pin_path)["config"]["gateway_ports"] == [7000, 7009]


def test_default_gateway_ports_exclude_privileged_ports(netns: NetNS, pin_path: str, mode: str) -> None:
    with balancer(netns, pin_path, mode), netns.entered():
        register_from("127.0.0.1", 1023, 1)
        register_from("127.0.0.1", 1024, 1)
        expect_counters(pin_path, accepted=1, port_not_allowed=1)
        assert set(table(pin_path)) == {1024}


@pytest.mark.parametrize("bad", ["abc", "9000-8000", "0-100", "1024-70000", "10-"])
def test_bad_gateway_ports_is_one_line_and_loads_nothing(netns: NetNS, pin_path: str, bad: str) -> None:
    result = netns.ebpflb("load", "lo", "--gateway-ports", bad, "--pin-path", pin_path)
    assert result.returncode == 2  # a usage error (README: exit codes)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--gateway-ports" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not netns.ip("link", "show", "lo").count("xdp")
