"""The shipped object under the real `xdp-loader` (xdp-tools), with no ebpflb process running:
it balances, accepts registrations in the kernel and expires silent gateways with the defaults
compiled into the object (service port 2152, registration port 3000, expiry 30 s).

Expiry with the 30 s default is tested without waiting 30 s: the test ages a gateway's
last-heard time in the program's own state map (under the map's spin lock, with no traffic
in flight), exactly as 29 or 31 seconds of silence would have left it; the program then
decides on the next datagram with its real clock. A gateway aged 29 s must stay and then
expire on its own about one second later, which pins the compiled-in 30 s down from both
sides. Without pins, the test reaches the map by id (bpftool) for that ageing only."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import time
import uuid
from typing import Any, Iterator

import pytest

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import LbState
from ebpflb.bpf.object_file import PINNED_MAPS, object_path

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
    status_json,
    wait_for_total,
    wait_until,
)

pytestmark = pytest.mark.kernel

LOCK_FILE = "/run/xdp-loader.lck"
LIBXDP_DIR = "/sys/fs/bpf/xdp"  # libxdp creates it for its dispatcher and leaves it behind
DEFAULT_EXPIRY_S = 30
BPF_F_LOCK = 4  # map update: copy the value under its bpf_spin_lock


def remove_stale_lock() -> None:
    """A killed xdp-loader leaves its lock file behind and every later run fails."""
    if os.path.exists(LOCK_FILE) and subprocess.run(["pgrep", "-x", "xdp-loader"], capture_output=True).returncode:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(LOCK_FILE)


def xdp_loader(ns: NetNS, *args: str) -> str:
    done = ns.run("xdp-loader", *args, timeout=30)
    assert done.returncode == 0, f"xdp-loader {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
    return done.stdout


@contextlib.contextmanager
def loaded_by_xdp_loader(ns: NetNS, pin_dir: str | None) -> Iterator[None]:
    """`xdp-loader load -m skb [-p DIR] lo OBJECT` in the namespace; unloaded and cleaned after."""
    if shutil.which("xdp-loader") is None:
        pytest.skip("xdp-loader is not installed (make deps installs xdp-tools)")
    remove_stale_lock()
    dispatcher_dir_existed = os.path.exists(LIBXDP_DIR)
    pins = ["-p", pin_dir] if pin_dir else []
    try:
        xdp_loader(ns, "load", "-m", "skb", *pins, "lo", str(object_path()))
        status = xdp_loader(ns, "status", "lo")
        assert "ebpflb_xdp" in status and "skb" in status, status
        yield
    finally:
        ns.run("xdp-loader", "unload", "-a", "lo", timeout=30)
        if pin_dir:
            shutil.rmtree(pin_dir, ignore_errors=True)
        if not dispatcher_dir_existed:
            with contextlib.suppress(OSError):  # still in use by someone else: not ours to remove
                os.rmdir(LIBXDP_DIR)
        remove_stale_lock()


@pytest.fixture
def pin_dir(bpffs: str) -> Iterator[str]:
    path = f"{bpffs}/ebpflb-xdp-loader-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def register(gws: list[Gateway], weights: list[int]) -> None:
    for gw, weight in zip(gws, weights):
        gw.register(weight)


SETTLE_ROUNDS = 3  # a change is built over the next datagrams, one build starting per jiffy (4 ms)


def settle(sender: Sender, gws: list[Gateway]) -> None:
    """Sends datagrams across a few jiffies, so that every pending schedule build completes
    (no ebpflb process runs here to complete it); they are not counted."""
    for _ in range(SETTLE_ROUNDS):
        before = sum(gw.count for gw in gws)
        sender.send(64)
        wait_for_total(gws, before + 64)
        time.sleep(0.01)


def counts_after(sender: Sender, gws: list[Gateway], n: int) -> list[int]:
    """Lets the last change take effect, then sends n datagrams from one CPU; returns what each
    gateway socket received of them."""
    settle(sender, gws)
    before = [gw.count for gw in gws]
    sender.send(n)
    wait_for_total(gws, sum(before) + n)
    return [gw.count - b for gw, b in zip(gws, before)]


# ---------------------------------------------------------------- ageing the state map


def age_gateways(state_pin: str, ages_s: dict[int, float]) -> None:
    """Makes the gateways on these ports look last heard `age` seconds ago, and sets the
    program's next expiry check to what it would then hold."""
    fd = libbpf.obj_get(state_pin)
    try:
        state = LbState()
        libbpf.map_lookup(fd, 0, state)
        now = time.monotonic_ns()  # CLOCK_MONOTONIC, the clock of bpf_ktime_get_coarse_ns
        for port, age_s in ages_s.items():
            slot = next((i for i, g in enumerate(state.gw) if g.port == port), -1)
            assert slot >= 0, f"no gateway on port {port} to age"
            state.gw[slot].last_seen_ns = now - int(age_s * 1e9)
        state.next_expiry_ns = min(
            g.last_seen_ns + DEFAULT_EXPIRY_S * 10**9 for g in state.gw if g.port and not g.is_static
        )
        key = ctypes.c_uint32(0)
        libbpf.check(
            libbpf.lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(state), BPF_F_LOCK), "age gateways"
        )
    finally:
        os.close(fd)


def bpftool_json(ns: NetNS, *args: str) -> Any:
    done = ns.run("bpftool", "-j", *args, check=True)
    return json.loads(done.stdout)


@contextlib.contextmanager
def state_map_of_lo(ns: NetNS, bpffs: str) -> Iterator[str]:
    """Pins the lb_state map of the program xdp-loader attached to lo (found by id), for the
    test's own access; the program does not know or care. Unpinned after."""
    links = bpftool_json(ns, "net", "show", "dev", "lo")
    prog_ids = [x["id"] for entry in links for x in entry.get("xdp", []) if x.get("devname") == "lo"]
    assert len(prog_ids) == 1, links
    prog = bpftool_json(ns, "prog", "show", "id", str(prog_ids[0]))
    maps = [bpftool_json(ns, "map", "show", "id", str(i)) for i in prog["map_ids"]]
    state_ids = [m["id"] for m in maps if m["name"] == "lb_state"]
    assert len(state_ids) == 1, maps
    pin = f"{bpffs}/ebpflb-xdp-loader-probe-{uuid.uuid4().hex[:12]}"
    ns.run("bpftool", "map", "pin", "id", str(state_ids[0]), pin, check=True)
    try:
        yield pin
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pin)


def expiry_check(sender: Sender, gws: list[Gateway], state_pin: str) -> None:
    """gws[0] aged 31 s expires on the next datagram; gws[1] aged 29 s stays and expires by
    itself about a second later; gws[2], registered moments ago, stays."""
    old, nearly, fresh = gws
    age_gateways(state_pin, {old.port: DEFAULT_EXPIRY_S + 1, nearly.port: DEFAULT_EXPIRY_S - 1})
    aged = time.monotonic()
    assert counts_after(sender, gws, 30) == [0, 10, 20], "the 31 s old gateway did not expire at once"

    def nearly_expired() -> bool:
        drain_all(gws)
        before = nearly.count
        sender.send(3)
        time.sleep(0.01)
        drain_all(gws)
        return nearly.count == before

    assert wait_until(nearly_expired, timeout=3.0, interval=0.05), "the 29 s old gateway never expired"
    took = time.monotonic() - aged
    assert 0.9 <= took <= 2.0, f"a gateway silent for 29 s expired {took:.2f} s later, not ~1 s"
    drain_all(gws)
    assert counts_after(sender, gws, 12) == [0, 0, 12]


# ---------------------------------------------------------------- xdp-loader with pins


def test_pinned_balances_registers_and_the_cli_reads_it(netns: NetNS, pin_dir: str) -> None:
    with loaded_by_xdp_loader(netns, pin_dir):
        assert sorted(os.listdir(pin_dir)) == ["lb_flows", "lb_percpu", "lb_port_index", "lb_schedules", "lb_state"]
        assert gateways_json(netns, pin_dir) == {}
        with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
            register(gws, [1, 2, 3])
            assert counts_after(sender, gws, 60) == [10, 20, 30]
            rows = gateways_json(netns, pin_dir)
            # the kernel counted every datagram each socket received, settling ones included
            assert {p: (r["weight"], r["packets"], r["static"]) for p, r in rows.items()} == {
                gws[0].port: (1, gws[0].count, False),
                gws[1].port: (2, gws[1].count, False),
                gws[2].port: (3, gws[2].count, False),
            }

            gws[0].register(4)  # a heartbeat with a new weight
            gws[2].register(0)  # leaves at once
            weights = {p: r["weight"] for p, r in gateways_json(netns, pin_dir).items()}
            assert weights == {gws[0].port: 4, gws[1].port: 2}
            assert counts_after(sender, gws, 60) == [40, 20, 0]

            cli_ok(netns, "weights", "set", str(gws[1].port), "4", "--pin-path", pin_dir)
            assert counts_after(sender, gws, 40) == [20, 20, 0]

        status = status_json(netns, pin_dir)
        assert status["config"] == {
            "service_port": SERVICE_PORT,
            "reg_port": 3000,
            "expiry_s": float(DEFAULT_EXPIRY_S),
            "trace": False,
            "userspace_registrations": False,
            "drop_without_gateway": False,
            "gateway_ports": [1024, 65535],
            "balance_forwarded": False,
            # compiled in, though xdp-loader attaches no tc program: replies keep the gateway's port
            "reply_nat": True,
            "socket_liveness": True,
            "affinity_s": 0.0,
            "affinity_key": "client",
            "flow_table_size": 65536,
        }
        assert status["counters"]["service"] == sum(gw.count for gw in gws)  # settling datagrams included
        assert status["counters"]["registrations_accepted"] == 6  # 5 datagrams and the CLI's weight change


def test_pinned_a_gateway_whose_socket_is_gone_gets_nothing_without_any_ebpflb_process(
    netns: NetNS, pin_dir: str
) -> None:
    """Liveness is the XDP program's own: under xdp-loader, no ebpflb process runs."""
    with loaded_by_xdp_loader(netns, pin_dir):
        with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
            register(gws, [1, 1, 2])
            assert counts_after(sender, gws, 40) == [10, 10, 20]
            gone = gws[2].port
            gws[2].close()  # as a killed process: no deregistration
            before, received = netns.nstat(["UdpNoPorts"]), gws[0].count + gws[1].count
            sender.send(40)
            assert wait_for_total(gws[:2], received + 40) == received + 40  # every one to a live gateway
            assert netns.nstat(["UdpNoPorts"]) == before  # none went to the closed port
        assert gone not in gateways_json(netns, pin_dir)
        counters = status_json(netns, pin_dir)["counters"]
        assert (counters["gateways_found_dead"], counters["expired"]) == (1, 0)


def test_pinned_expires_with_the_compiled_in_30_s(netns: NetNS, pin_dir: str) -> None:
    with loaded_by_xdp_loader(netns, pin_dir):
        with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
            register(gws, [1, 1, 2])
            assert counts_after(sender, gws, 40) == [10, 10, 20]
            expiry_check(sender, gws, f"{pin_dir}/lb_state")
        assert set(gateways_json(netns, pin_dir)) == {gws[2].port}
        assert status_json(netns, pin_dir)["counters"]["expired"] == 2


# ---------------------------------------------------------------- xdp-loader without pins


def test_unpinned_balances_registers_and_passes_without_gateway(netns: NetNS, bpffs: str) -> None:
    assert not set(PINNED_MAPS) & set(os.listdir(bpffs)), "maps pinned at the bpffs root before the test"
    with loaded_by_xdp_loader(netns, None):
        assert not set(PINNED_MAPS) & set(os.listdir(bpffs)), "xdp-loader without -p must pin no map"
        with netns.entered(), gateways(2) as gws, Sender(4, LOOPBACK[4]) as sender:
            service = Gateway(4, port=SERVICE_PORT)  # whoever listens on the service port itself
            try:
                sender.send(5)  # no gateway yet: datagrams pass unchanged
                assert wait_for_total([service], 5) == 5

                register(gws, [1, 3])
                assert counts_after(sender, gws, 40) == [10, 30]
                gws[0].register(2)  # weight change by heartbeat
                assert counts_after(sender, gws, 50) == [20, 30]
                gws[1].register(0)  # deregistration
                assert counts_after(sender, gws, 10) == [10, 0]
                gws[0].register(0)
                sender.send(7)
                assert wait_for_total([service], 12) == 12
                assert drain_all(gws) == 0
            finally:
                service.close()


def test_unpinned_expires_with_the_compiled_in_30_s(netns: NetNS, bpffs: str) -> None:
    with loaded_by_xdp_loader(netns, None):
        with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
            register(gws, [1, 1, 2])
            assert counts_after(sender, gws, 40) == [10, 10, 20]
            with state_map_of_lo(netns, bpffs) as state_pin:
                expiry_check(sender, gws, state_pin)
