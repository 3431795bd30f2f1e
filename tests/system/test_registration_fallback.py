"""`run -u` killed: registrations go on in the kernel, so no gateway expires and balancing
never stops. With the process alive, they still go to it (the kernel takes none)."""

from __future__ import annotations

import time

import pytest

from ebpflb.dataplane import Instance

from ..netns import NetNS
from ..traffic import cli_ok, gateways, wait_until
from .test_run_mode import RunProcess, counts_after_sending, remove_stale_lock, wait_registered

pytestmark = pytest.mark.kernel

EXPIRY_S = 1.5


def in_kernel(pin_path: str) -> int:
    return int(Instance(pin_path).snapshot().counters.reg_in_kernel)


def test_killed_userspace_registrations_degrade_to_the_kernel(netns: NetNS, pin_path: str) -> None:
    try:
        with netns.entered(), gateways(2) as gws:
            with RunProcess(netns, "-u", "-e", str(EXPIRY_S), "lo", "--pin-path", pin_path) as run:
                run.started()
                gws[0].register(3)
                gws[1].register(1)
                wait_registered(pin_path, {gws[0].port: 3, gws[1].port: 1})
                accepted = int(Instance(pin_path).snapshot().counters.reg_accepted)
                assert in_kernel(pin_path) == 0  # the process received both
                run.kill9()

            # heartbeats for twice the expiry time, and one weight change, with nobody listening
            deadline = time.monotonic() + 2 * EXPIRY_S
            while time.monotonic() < deadline:
                for g in gws:
                    g.register(3 if g is gws[0] else 1)
                time.sleep(EXPIRY_S / 5)
            gws[1].register(2)
            wait_registered(pin_path, {gws[0].port: 3, gws[1].port: 2})
            snap = Instance(pin_path).snapshot()
            assert snap.counters.expired == 0
            assert in_kernel(pin_path) == snap.counters.reg_accepted - accepted > 10
            assert counts_after_sending(netns, gws, 10) == {gws[0].port: 6, gws[1].port: 4}
            assert snap.counters.no_gateway_passed == 0
            # registrations were never passed up to a port nobody listens on
            assert wait_until(lambda: netns.nstat(["UdpNoPorts"]).get("UdpNoPorts", 0) == 0, 1.0)
    finally:
        remove_stale_lock(pin_path)
        cli_ok(netns, "unload", "--pin-path", pin_path)
