"""ebpflb.gateway against the real kernel: the CLI loads the shipped object on lo of a fresh
namespace; gateways made with the helper register, heartbeat, re-weight, leave and expire."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ebpflb.dataplane import Instance
from ebpflb.gateway import Gateway

from ..netns import REPO, NetNS
from ..traffic import LOOPBACK, Sender, cli_ok, gateways_json, status_json, wait_until

pytestmark = pytest.mark.kernel

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def load(ns: NetNS, pin_path: str, *options: str) -> None:
    cli_ok(ns, "load", "lo", "--pin-path", pin_path, *options)


def weights(ns: NetNS, pin_path: str) -> dict[int, int]:
    return {port: row["weight"] for port, row in gateways_json(ns, pin_path).items()}


def live_ports(pin_path: str) -> set[int]:
    """Ports in the gateway table, straight from the pinned map: cheap enough to poll."""
    return {g.port for g in Instance(pin_path).snapshot().gateways}


def receive_all(sock: socket.socket, timeout: float = 0.3) -> list[bytes]:
    """Everything queued on sock, waiting up to `timeout` for stragglers."""
    got = []
    sock.settimeout(timeout)
    try:
        while True:
            got.append(sock.recv(65535))
    except (socket.timeout, BlockingIOError):
        return got


# ---------------------------------------------------------------- in a namespace, without BPF


def test_socket_on_a_non_loopback_address_is_refused(netns: NetNS) -> None:
    netns.ip("addr", "add", "10.9.8.7/32", "dev", "lo")
    with netns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("10.9.8.7", 0))
    try:
        with pytest.raises(ValueError, match="loopback source"):
            Gateway(sock=sock, start=False)
    finally:
        sock.close()


# ---------------------------------------------------------------- in the kernel


@pytest.mark.parametrize("version", [4, 6])
def test_gateway_appears_with_its_weight_and_receives(netns: NetNS, pin_path: str, version: int) -> None:
    load(netns, pin_path)
    with netns.entered():
        with Gateway(weight=7, host=LOOPBACK[version]) as gw, Sender(version, LOOPBACK[version]) as sender:
            assert weights(netns, pin_path) == {gw.port: 7}
            sent = sender.send(20)
            assert sorted(receive_all(gw.sock)) == sorted(sent)
    assert status_json(netns, pin_path)["counters"]["registrations_accepted"] >= 2  # register + deregister


def test_weight_change_applies_at_once(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    with netns.entered(), Gateway(weight=1, interval=60) as one, Gateway(weight=1, interval=60) as two:
        assert weights(netns, pin_path) == {one.port: 1, two.port: 1}
        two.weight = 3  # no heartbeat is due for a minute: the setter itself must send
        assert weights(netns, pin_path) == {one.port: 1, two.port: 3}
        with Sender(4, LOOPBACK[4]) as sender:
            sender.send(40)  # 10 cycles of 1:3, from one CPU
            assert (len(receive_all(one.sock)), len(receive_all(two.sock))) == (10, 30)


def test_weight_change_rides_the_next_heartbeat_when_stopped(netns: NetNS, pin_path: str) -> None:
    """A weight set while the heartbeat is not running is sent by the next start."""
    load(netns, pin_path)
    with netns.entered():
        gw = Gateway(weight=2, interval=0.1, start=False)
        try:
            gw.weight = 9
            assert weights(netns, pin_path) == {}
            gw.start()
            assert weights(netns, pin_path) == {gw.port: 9}
        finally:
            gw.close()


def test_users_own_socket_registers_and_stays_open(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    with netns.entered():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::", 0))  # dual-stack wildcard: receives IPv4 and IPv6 service datagrams
    try:
        port = sock.getsockname()[1]
        with Gateway(sock=sock, weight=4) as gw:
            assert gw.port == port
            assert weights(netns, pin_path) == {port: 4}
        assert weights(netns, pin_path) == {}
        assert sock.fileno() != -1, "the helper closed a socket it did not create"
    finally:
        sock.close()


@pytest.mark.parametrize("version", [4, 6])
def test_close_deregisters_at_once(netns: NetNS, pin_path: str, version: int) -> None:
    load(netns, pin_path)
    with netns.entered():
        with Gateway(weight=2, host=LOOPBACK[version]) as stays, Gateway(weight=5, host=LOOPBACK[version]) as leaves:
            assert weights(netns, pin_path) == {stays.port: 2, leaves.port: 5}
            leaves.close()
            assert weights(netns, pin_path) == {stays.port: 2}
            with Sender(version, LOOPBACK[version]) as sender:
                sent = sender.send(10)
            assert sorted(receive_all(stays.sock)) == sorted(sent)
        assert weights(netns, pin_path) == {}
    assert status_json(netns, pin_path)["counters"]["expired"] == 0


def test_heartbeats_keep_it_alive_and_silence_expires_it(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path, "-e", "1")
    with netns.entered(), Sender(4, LOOPBACK[4]) as sender:
        with Gateway(weight=1, interval=0.2) as steady, Gateway(weight=1, interval=0.2) as silent:
            deadline = time.monotonic() + 2.5  # 2.5 expiry times, with traffic that triggers expiry checks
            while time.monotonic() < deadline:
                sender.send(2)
                time.sleep(0.05)
            assert weights(netns, pin_path) == {steady.port: 1, silent.port: 1}

            silent.stop(deregister=False)  # the process lives on but its heartbeat stops
            stopped = time.monotonic()

            def silent_gone() -> bool:
                sender.send(1)  # expiry is checked on the packet path
                return silent.port not in live_ports(pin_path)

            assert wait_until(silent_gone, timeout=3.0, interval=0.02), "the silent gateway did not expire"
            silence = time.monotonic() - stopped
            assert 0.8 <= silence <= 2.5, f"expired after {silence:.2f} s of silence with -e 1"
            assert weights(netns, pin_path) == {steady.port: 1}
            assert status_json(netns, pin_path)["counters"]["expired"] == 1

            receive_all(steady.sock, 0.05)
            receive_all(silent.sock, 0.05)
            sent = sender.send(10)
            assert sorted(receive_all(steady.sock)) == sorted(sent)
            assert receive_all(silent.sock, 0.05) == []


def test_exit_without_close_deregisters(netns: NetNS, pin_path: str) -> None:
    """A daemon that simply returns from main deregisters through atexit."""
    load(netns, pin_path)
    script = textwrap.dedent(
        """
        import sys
        from ebpflb.gateway import Gateway
        gw = Gateway(weight=6)
        print(gw.port, flush=True)
        sys.stdin.readline()
        """
    )

    proc = netns.popen(sys.executable, "-c", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        assert weights(netns, pin_path) == {port: 6}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
        assert weights(netns, pin_path) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the examples in examples/

EXAMPLES = REPO / "examples"


def start_example(ns: NetNS, *args: str) -> subprocess.Popen:
    return ns.popen(sys.executable, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupt(proc: subprocess.Popen, signum: int = signal.SIGINT) -> str:
    """Ctrl-C (or `kill`), then everything the example printed after its first line."""
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=10)
    return out


def test_minimal_example_registers_receives_and_deregisters(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    proc = start_example(netns, str(EXAMPLES / "minimal_gateway.py"), "7001", "3")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "gateway on port 7001 registered with weight 3; Ctrl-C stops it"
        assert weights(netns, pin_path) == {7001: 3}
        with netns.entered(), Sender(4, LOOPBACK[4]) as sender:
            sender.send(2, size=24)
        assert proc.stdout.readline().startswith("24 bytes from 127.0.0.1:")
        assert proc.stdout.readline().startswith("24 bytes from 127.0.0.1:")
        assert interrupt(proc).strip().endswith("deregistered")
        assert proc.returncode == 0
        assert weights(netns, pin_path) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_adaptive_example_weights_follow_capacity(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    fast = start_example(netns, str(EXAMPLES / "adaptive_gateway.py"), "7001", "--work-ms", "1", "--period", "0.5")
    slow = start_example(netns, str(EXAMPLES / "adaptive_gateway.py"), "7002", "--work-ms", "4", "--period", "0.5")
    try:
        for proc, port in ((fast, 7001), (slow, 7002)):
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == f"gateway on port {port} registered with weight 100"
        assert weights(netns, pin_path) == {7001: 100, 7002: 100}
        with netns.entered(), Sender(4, LOOPBACK[4]) as sender:
            for _ in range(30):  # 3 s at 200 datagrams/s: within what both together can handle
                sender.send(20, cpu=None)
                time.sleep(0.1)
        settled = weights(netns, pin_path)
        assert settled[7001] < 100 or settled[7002] < 100, f"no weight moved: {settled}"
        assert settled[7001] > 2 * settled[7002], f"the 4x slower gateway is not weighted well below: {settled}"
        for proc, signum in ((fast, signal.SIGINT), (slow, signal.SIGTERM)):
            assert interrupt(proc, signum).strip().endswith("deregistered")
        assert weights(netns, pin_path) == {}
    finally:
        for proc in (fast, slow):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
