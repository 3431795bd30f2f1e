"""One instance, one owner: concurrent loads, interrupted loads, pin paths and network
namespaces, `ip netns exec`. The real CLI in namespaces; afterwards exactly what should be
there is there, reachable by every command, and `unload` leaves nothing."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import ABI_VERSION, LbState
from ebpflb.dataplane import Instance, config_for

from ..netns import REPO, NetNS
from ..traffic import cli_ok

pytestmark = pytest.mark.kernel

ROUNDS = 20


def xdp_ids(ns: NetNS) -> list[int]:
    """Ids of the XDP programs attached in the namespace (generic or native)."""
    links = json.loads(ns.ip("-j", "link", "show"))
    return [link["xdp"]["prog"]["id"] for link in links if "xdp" in link and "prog" in link["xdp"]]


def pinned_id(pin_path: str) -> int:
    fd = libbpf.obj_get(os.path.join(pin_path, "ebpflb_xdp"))
    try:
        return libbpf.prog_id(fd)
    finally:
        os.close(fd)


def assert_nothing_left(ns: NetNS, pin_path: str) -> None:
    assert not os.path.exists(pin_path), os.listdir(pin_path)
    assert xdp_ids(ns) == []


def start_load(ns: NetNS, pin_path: str) -> subprocess.Popen:
    return ns.popen(
        sys.executable, "-m", "ebpflb", "load", "lo", "--pin-path", pin_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_concurrent_loads_leave_exactly_one_reachable_instance(netns: NetNS, pin_path: str) -> None:
    for round_ in range(ROUNDS):
        loads = [start_load(netns, pin_path) for _ in range(2)]
        results = [(p.wait(timeout=60), *p.communicate()) for p in loads]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 1], f"round {round_}: {results}"
        loser = next(err for code, _, err in results if code == 1)
        assert "already loaded" in loser and "Traceback" not in loser, loser
        assert xdp_ids(netns) == [pinned_id(pin_path)], f"round {round_}"
        status = json.loads(cli_ok(netns, "status", "--json", "--pin-path", pin_path))
        assert [i["name"] for i in status["interfaces"]] == ["lo"]
        cli_ok(netns, "gateways", "add", "7001", "--weight", "2", "--pin-path", pin_path)
        cli_ok(netns, "unload", "--pin-path", pin_path)
        assert_nothing_left(netns, pin_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_load_leaves_nothing_attached(netns: NetNS, pin_path: str, sig: int) -> None:
    """Interrupted at moments spread over the whole load: it either left nothing at all, or
    finished (then it is whole and says so); never a program attached without pins."""
    outcomes = set()
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.4, 3.0, 4.0):
        load = start_load(netns, pin_path)
        time.sleep(delay)
        load.send_signal(sig)
        code = load.wait(timeout=60)
        out, err = load.communicate()
        assert "Traceback" not in err, err
        if os.path.exists(pin_path) or xdp_ids(netns):
            assert xdp_ids(netns) == [pinned_id(pin_path)], err
            # it said so: done (perhaps interrupted while exiting), or interrupted after loading
            assert "ebpflb loaded on lo" in out or "ebpflb was loaded" in err, (code, out, err)
            cli_ok(netns, "unload", "--pin-path", pin_path)
            outcomes.add("loaded")
        else:
            assert code != 0
            outcomes.add("nothing")
        assert_nothing_left(netns, pin_path)
    assert outcomes == {"loaded", "nothing"}  # the delays reached both sides of the load


def _interrupt_after_the_kernel_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that lands during the attach call is raised as soon as it returns, before
    Python has recorded the attachment (the window the timed test above can only hit by luck)."""
    real = libbpf.xdp_attach

    def attach_then_interrupt(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(libbpf, "xdp_attach", attach_then_interrupt)


def test_a_load_interrupted_right_after_the_kernel_attached_leaves_nothing(
    netns: NetNS, pin_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after_the_kernel_attached(monkeypatch)
    with netns.entered(), pytest.raises(KeyboardInterrupt):
        Instance(pin_path).load(["lo"], config_for(2152, 3000, 30, False, False, False))
    assert_nothing_left(netns, pin_path)


def test_a_take_over_interrupted_right_after_the_swap_keeps_the_old_program(
    netns: NetNS, pin_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    old = pinned_id(pin_path)
    _interrupt_after_the_kernel_attached(monkeypatch)
    with netns.entered(), pytest.raises(KeyboardInterrupt):
        Instance(pin_path).take_over(["lo"], config_for(2153, 3000, 30, False, False, False))  # another port: a swap
    monkeypatch.undo()
    assert xdp_ids(netns) == [old] == [pinned_id(pin_path)]
    status = json.loads(cli_ok(netns, "status", "--json", "--pin-path", pin_path))
    assert status["config"]["service_port"] == 2152, status["config"]
    cli_ok(netns, "unload", "--pin-path", pin_path)
    assert_nothing_left(netns, pin_path)


def test_a_pin_path_serves_one_network_namespace(netns_factory, pin_path: str) -> None:
    a, b = netns_factory("nsa"), netns_factory("nsb")
    cli_ok(a, "load", "lo", "--pin-path", pin_path)
    try:
        cli_ok(a, "gateways", "add", "7001", "--weight", "3", "--pin-path", pin_path)
        for command in (["status"], ["unload"], ["load", "lo"], ["run", "lo"], ["weights", "set", "7001", "9"]):
            result = b.ebpflb(*command, "--pin-path", pin_path)
            assert result.returncode == 1, (command, result)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "serves another network namespace" in lines[0], (command, result.stderr)
            assert xdp_ids(b) == []
        # A's instance is untouched
        status = json.loads(cli_ok(a, "status", "--json", "--pin-path", pin_path))
        assert [i["name"] for i in status["interfaces"]] == ["lo"]
        gateways = json.loads(cli_ok(a, "gateways", "--json", "--pin-path", pin_path))
        assert [(g["port"], g["weight"]) for g in gateways] == [(7001, 3)]
    finally:
        cli_ok(a, "unload", "--pin-path", pin_path)
    assert_nothing_left(a, pin_path)


def test_the_default_pin_path_is_per_network_namespace(netns: NetNS, bpffs: str) -> None:
    inode = os.stat(f"{netns.path}").st_ino
    expected = f"{bpffs}/ebpflb-net{inode}"
    assert not os.path.exists(expected)
    try:
        out = cli_ok(netns, "load", "lo")
        assert f"pins in {expected}" in " ".join(out.split())
        assert os.path.exists(f"{expected}/lb_state")
        assert json.loads(cli_ok(netns, "status", "--json"))["pin_path"] == expected
        cli_ok(netns, "unload")
    finally:
        if os.path.exists(expected):
            subprocess.run(["nsenter", f"--net={netns.path}", sys.executable, "-m", "ebpflb", "unload"], cwd=REPO)
    assert_nothing_left(netns, expected)


def ip_netns_exec(ns: NetNS, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, "sh", "-c", script],
        capture_output=True, text=True, timeout=60, cwd=str(REPO),
    )  # fmt: skip


@pytest.mark.parametrize("mount_bpffs", [False, True], ids=["as-is", "bpffs-mounted-inside"])
def test_ip_netns_exec_fails_before_attaching(netns: NetNS, pin_path: str, mount_bpffs: bool) -> None:
    mount = "mount -t bpf bpf /sys/fs/bpf && " if mount_bpffs else ""
    result = ip_netns_exec(netns, f"{mount}{sys.executable} -m ebpflb load lo --pin-path {pin_path}")
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nsenter --net=/run/netns/" in lines[0], result.stderr
    assert xdp_ids(netns) == []
    assert not os.path.exists(pin_path)


BPF_F_LOCK = 4


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_pins_of_another_abi_version_are_refused_and_unload_removes_them(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    fd = libbpf.obj_get(os.path.join(pin_path, "lb_state"))
    try:  # as a future ebpflb with the same sizes would have stamped it
        state = LbState()
        libbpf.map_lookup(fd, 0, state)
        assert state.abi_version == ABI_VERSION
        state.abi_version = 99
        key = ctypes.c_uint32(0)
        libbpf.check(libbpf.lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(state), BPF_F_LOCK), "x")
    finally:
        os.close(fd)
    for command in (["status"], ["gateways"], ["gateways", "add", "7001", "--weight", "1"], ["load", "lo"]):
        line = one_error_line(netns.ebpflb(*command, "--pin-path", pin_path))
        assert "made by another version of ebpflb (pinned layout version 99" in line, (command, line)
    cli_ok(netns, "unload", "--pin-path", pin_path)
    assert_nothing_left(netns, pin_path)


def test_a_state_map_of_another_size_is_refused_without_reading_it(netns: NetNS, pin_path: str) -> None:
    os.makedirs(pin_path)
    subprocess.run(
        ["bpftool", "map", "create", f"{pin_path}/lb_state", "type", "array", "key", "4", "value", "8",
         "entries", "1", "name", "lb_state"],
        check=True,
    )  # fmt: skip
    line = one_error_line(netns.ebpflb("status", "--pin-path", pin_path))
    assert "made by another version of ebpflb (a state of 8 bytes" in line, line
    cli_ok(netns, "unload", "--pin-path", pin_path)
    assert_nothing_left(netns, pin_path)
