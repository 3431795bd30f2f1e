"""System tests of `ebpflb run` (and its alias `ebpflb_udp_wrr`): a real foreground process in a
namespace, its output read from a pipe (not a terminal: plain lines), stopped by real signals.

Over 300 lines: the RunProcess harness and the run-mode scenarios that use it."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from ebpflb.cli.run_lock import lock_path, running_owner
from ebpflb.dataplane import Instance

from ..netns import NetNS
from ..traffic import LOOPBACK, REG_PORT, Gateway, Sender, gateways, wait_for_total, wait_until

pytestmark = pytest.mark.kernel

UDP_WRR = Path(sys.executable).parent / "ebpflb_udp_wrr"
READY = "balancing UDP port"


class RunProcess:
    """`ebpflb run ARGS` (or another command line) in a namespace, its output collected by threads.
    Leaving the block stops it (SIGTERM, then SIGKILL), also when the test failed."""

    def __init__(self, ns: NetNS, *args: str, command: Optional[list[str]] = None) -> None:
        cmd = command if command is not None else [sys.executable, "-m", "ebpflb", "run"]
        self.proc = ns.popen(*cmd, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pin_path = args[args.index("--pin-path") + 1] if "--pin-path" in args else None
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(self.out + self.err)

    def wait_for(self, text: str, timeout: float = 15.0, stderr: bool = False) -> bool:
        lines = self.err if stderr else self.out
        wait_until(lambda: any(text in line for line in lines) or self.proc.poll() is not None, timeout)
        return any(text in line for line in lines)

    def started(self) -> "RunProcess":
        assert self.wait_for(READY), f"run did not start: {self.output()}"
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Sends sig and waits for the exit code and the end of its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "RunProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            try:
                self.stop(signal.SIGTERM, timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()
                remove_stale_lock(self.pin_path)


def remove_stale_lock(pin_path: Optional[str]) -> None:
    """A killed run leaves its lock file (unlocked); the next run would reuse it."""
    with contextlib.suppress(FileNotFoundError):
        if pin_path and running_owner(pin_path) is None:
            os.unlink(lock_path(pin_path))


def run_cli(ns: NetNS, *args: str) -> subprocess.CompletedProcess:
    return ns.ebpflb(*args)


def assert_gone(ns: NetNS, pin_path: str) -> None:
    """Nothing left: no pin directory, no XDP program on lo, no lock file."""
    assert not os.path.exists(pin_path), os.listdir(pin_path)
    assert "xdp" not in ns.ip("link", "show", "lo")
    assert not os.path.exists(lock_path(pin_path))


def counts_after_sending(ns: NetNS, gws: list[Gateway], count: int) -> dict[int, int]:
    with ns.entered(), Sender(4, LOOPBACK[4]) as sender:
        before = sum(g.count for g in gws)
        sent = sender.send(count)
        assert wait_for_total(gws, before + len(sent)) == before + len(sent)
    return {g.port: g.count for g in gws}


def snapshot_ports(pin_path: str) -> dict[int, int]:
    return {g.port: g.weight for g in Instance(pin_path).snapshot().gateways}


def wait_registered(pin_path: str, expected: dict[int, int], timeout: float = 5.0) -> None:
    assert wait_until(lambda: snapshot_ports(pin_path) == expected, timeout), snapshot_ports(pin_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_balances_and_a_signal_detaches(netns: NetNS, pin_path: str, sig: int) -> None:
    with RunProcess(netns, "lo", "--pin-path", pin_path) as run:
        run.started()
        assert os.path.exists(pin_path)
        assert "prog/xdp id" in netns.ip("link", "show", "lo") or "xdpgeneric" in netns.ip("link", "show", "lo")
        with open(lock_path(pin_path)) as lock:
            assert lock.read().split("\n")[:2] == [str(run.pid), pin_path]
        with netns.entered(), gateways(2) as gws:
            gws[0].register(3)
            gws[1].register(1)
            wait_registered(pin_path, {gws[0].port: 3, gws[1].port: 1})
            counts = counts_after_sending(netns, gws, 8)
        assert counts == {gws[0].port: 6, gws[1].port: 2}
        assert run.wait_for(f"gateway {gws[0].port} registered with weight 3")
        assert run.stop(sig) == 0
    text = run.output()
    assert f"detached from lo; removed {pin_path}" in text
    assert f"stopped by {signal.Signals(sig).name}" in text
    assert "Traceback" not in text
    assert_gone(netns, pin_path)


def test_second_run_or_load_is_refused_while_it_lives(netns: NetNS, pin_path: str) -> None:
    other_pin = f"{pin_path}-other"
    with RunProcess(netns, "lo", "--pin-path", pin_path) as run:
        run.started()
        link_before = netns.ip("link", "show", "lo")
        for args in (
            ("run", "lo", "--pin-path", pin_path),
            ("load", "lo", "--pin-path", pin_path),
            ("unload", "--pin-path", pin_path),
            ("load", "lo", "--pin-path", other_pin),  # same interface, another pin path
            ("run", "lo", "--pin-path", other_pin),
        ):
            result = run_cli(netns, *args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"pid {run.pid}" in lines[0], (args, result.stderr)
            assert "Traceback" not in result.stderr
        assert not os.path.exists(other_pin)
        assert netns.ip("link", "show", "lo") == link_before
        assert run.proc.poll() is None
        assert run.stop() == 0
    assert_gone(netns, pin_path)


def test_load_u_says_to_use_run(netns: NetNS, pin_path: str) -> None:
    result = run_cli(netns, "load", "-u", "lo", "--pin-path", pin_path)
    assert result.returncode == 2  # a wrong command line
    assert result.stderr.strip().splitlines() == [
        "error: -u needs a process to receive registrations: use `ebpflb run -u IFACE...` instead "
        "(see `ebpflb --help`)"
    ]
    assert not os.path.exists(pin_path)
    assert "xdp" not in netns.ip("link", "show", "lo")


def test_run_sweeps_expired_gateways_without_traffic(netns: NetNS, pin_path: str) -> None:
    with RunProcess(netns, "-e", "1", "lo", "--pin-path", pin_path) as run, netns.entered(), Gateway() as gw:
        run.started()
        gw.register(2)
        wait_registered(pin_path, {gw.port: 2})
        registered = time.monotonic()
        # no datagram reaches the XDP program from here on, and the table is read without
        # sweeping: only the run process's periodic SWEEP expires it
        assert wait_until(lambda: not Instance(pin_path).snapshot(sweep=False).gateways, 4.0)
        took = time.monotonic() - registered
        assert 0.95 <= took <= 2.0, took
        assert Instance(pin_path).snapshot(sweep=False).counters.expired == 1
        assert run.wait_for(f"gateway {gw.port} expired")


@pytest.fixture
def stale_lock_removed(pin_path: str) -> Iterator[None]:
    """A killed run leaves its (unlocked) lock file; the next run reuses and removes it, but if the
    test fails before that, remove it here."""
    yield
    remove_stale_lock(pin_path)


@pytest.mark.parametrize("same_config", [True, False], ids=["same-config", "new-config"])
@pytest.mark.usefixtures("stale_lock_removed")
def test_kill9_keeps_balancing_and_next_run_adopts_state(netns: NetNS, pin_path: str, same_config: bool) -> None:
    with netns.entered(), gateways(2) as gws:
        with RunProcess(netns, "lo", "--pin-path", pin_path) as first:
            first.started()
            gws[0].register(3)
            gws[1].register(1)
            wait_registered(pin_path, {gws[0].port: 3, gws[1].port: 1})
            assert counts_after_sending(netns, gws, 8) == {gws[0].port: 6, gws[1].port: 2}
            first.kill9()
        old_program = netns.ip("link", "show", "lo").split("prog/xdp id ")[1].split()[0]

        # nobody cleaned up: the dataplane keeps balancing with the registered gateways
        assert os.path.exists(pin_path)
        assert counts_after_sending(netns, gws, 8) == {gws[0].port: 12, gws[1].port: 4}
        # without a run process, `load` still finds the instance loaded
        refused = run_cli(netns, "load", "lo", "--pin-path", pin_path)
        assert refused.returncode == 1 and "already loaded" in refused.stderr

        options = [] if same_config else ["-t", "-e", "7"]
        with RunProcess(netns, *options, "lo", "--pin-path", pin_path) as second:
            second.started()
            adopted = "kept its program" if same_config else "replaced its program for the new configuration"
            assert (
                f"adopted the running instance at {pin_path} (2 gateway(s), 16 datagrams balanced so far); {adopted}"
                in second.output()
            )
            program = netns.ip("link", "show", "lo").split("prog/xdp id ")[1].split()[0]
            assert (program == old_program) == same_config
            snap = Instance(pin_path).snapshot()
            assert {g.port: (g.slot, g.weight, g.packets) for g in snap.gateways} == {
                gws[0].port: (0, 3, 12),
                gws[1].port: (1, 1, 4),
            }
            assert (snap.counters.service, snap.counters.reg_accepted) == (16, 2)
            assert snap.state.config.expiry_ns == (30 if same_config else 7) * 10**9
            assert snap.state.config.trace == (0 if same_config else 1)
            # the schedule goes on where it was: 4 more datagrams are one more cycle of 3:1
            assert counts_after_sending(netns, gws, 4) == {gws[0].port: 15, gws[1].port: 5}
            assert second.stop() == 0
    assert_gone(netns, pin_path)


def test_run_u_refuses_a_taken_registration_port_and_changes_nothing(netns: NetNS, pin_path: str) -> None:
    with netns.entered():
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind(("0.0.0.0", REG_PORT))
    try:
        result = run_cli(netns, "run", "-u", "lo", "--pin-path", pin_path)
    finally:
        squatter.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen for registrations on UDP port {REG_PORT}" in lines[0], result.stderr
    assert_gone(netns, pin_path)


def test_udp_wrr_console_script_runs_the_original_command_line(netns: NetNS, pin_path: str) -> None:
    assert UDP_WRR.exists(), "console script missing: pip install -e . (make venv)"
    with RunProcess(netns, "-t", "-e", "30", "-u", "lo", "--pin-path", pin_path, command=[str(UDP_WRR)]) as run:
        run.started()
        status = Instance(pin_path).snapshot().state.config
        assert (status.trace, status.userspace_reg, status.expiry_ns) == (1, 1, 30 * 10**9)
        with netns.entered(), gateways(2) as gws, Gateway(6) as gw6:
            gw6.register(5)  # over ::1
            gws[0].register(2)
            gws[1].register(1)
            wait_registered(pin_path, {gws[0].port: 2, gws[1].port: 1, gw6.port: 5})
            gw6.register(0)
            wait_registered(pin_path, {gws[0].port: 2, gws[1].port: 1})
            assert counts_after_sending(netns, gws, 6) == {gws[0].port: 4, gws[1].port: 2}
        assert run.stop(signal.SIGINT) == 0
    assert "Traceback" not in run.output()
    assert_gone(netns, pin_path)


@pytest.mark.usefixtures("stale_lock_removed")
def test_run_on_a_terminal_shows_a_live_table(netns: NetNS, pin_path: str) -> None:
    controller, terminal = pty.openpty()
    proc = netns.popen(
        sys.executable, "-m", "ebpflb", "run", "lo", "--pin-path", pin_path,
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
        env={**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"},
    )  # fmt: skip
    os.close(terminal)
    screen = bytearray()

    def read_screen() -> None:
        with contextlib.suppress(OSError):  # EIO once the process is gone
            while chunk := os.read(controller, 65536):
                screen.extend(chunk)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        with netns.entered(), Gateway() as gw:
            assert wait_until(lambda: READY in " ".join(screen.decode(errors="replace").split()), 15.0), bytes(screen)
            gw.register(5)
            wait_registered(pin_path, {gw.port: 5})
            assert wait_until(lambda: f" {gw.port} " in screen.decode(errors="replace"), 5.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        os.close(controller)
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # redrawn in place, with colours: rich Live, not plain lines
    assert "weight %" in text and "pkt/s" in text
    assert "registered with weight" not in text  # the plain-line log is for pipes only
    assert f"detached from lo; removed {pin_path}" in text
    assert_gone(netns, pin_path)
