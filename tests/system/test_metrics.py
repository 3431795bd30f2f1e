"""Prometheus metrics of a real instance: `ebpflb metrics` carries the exact counts of known
traffic and passes `promtool check metrics`; `ebpflb exporter` and `run --metrics-listen` serve
the same over HTTP, read the pins on every scrape and stop cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ..metrics_text import per_port, samples_of, value
from ..netns import NetNS
from ..traffic import LOOPBACK, REG_PORT, Gateway, Sender, cli_ok, gateways, wait_for_total, wait_until

pytestmark = pytest.mark.kernel

WEIGHTS = (1, 2, 3)
PAYLOAD = 24
UDP_LENGTH = 8 + PAYLOAD


def load(ns: NetNS, pin_path: str) -> None:
    cli_ok(ns, "load", "lo", "--pin-path", pin_path)


def metrics_text(ns: NetNS, pin_path: str) -> str:
    return cli_ok(ns, "metrics", "--pin-path", pin_path)


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says of the text: nothing when it is clean."""
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    return (result.stdout + result.stderr).strip() if result.returncode or result.stdout or result.stderr else ""


def registered(ns: NetNS, pin_path: str, gws: list[Gateway], weights: tuple[int, ...]) -> None:
    for gw, weight in zip(gws, weights):
        gw.register(weight)
    ports = {gw.port for gw in gws}
    listed = lambda: set(per_port(samples_of(metrics_text(ns, pin_path)), "ebpflb_gateway_weight"))  # noqa: E731
    assert wait_until(lambda: ports <= listed(), 5)


def test_metrics_carry_exact_values_and_pass_promtool(netns: NetNS, pin_path: str) -> None:
    load(netns, pin_path)
    with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
        before = time.time()
        registered(netns, pin_path, gws, WEIGHTS)
        gws[0].sock.sendto(b"\x00", (LOOPBACK[4], REG_PORT))  # 1 byte: rejected as short
        sender.send(600, size=PAYLOAD)
        assert wait_for_total(gws, 600) == 600
        text = metrics_text(netns, pin_path)
    assert promtool_problems(text) == ""
    s = samples_of(text)
    ports = [gw.port for gw in gws]
    assert per_port(s, "ebpflb_gateway_packets_total") == {p: 100.0 * w for p, w in zip(ports, WEIGHTS)}
    assert per_port(s, "ebpflb_gateway_bytes_total") == {p: 100.0 * w * UDP_LENGTH for p, w in zip(ports, WEIGHTS)}
    assert per_port(s, "ebpflb_gateway_weight") == dict(zip(ports, map(float, WEIGHTS)))
    assert per_port(s, "ebpflb_gateway_up") == {p: 1.0 for p in ports}
    assert per_port(s, "ebpflb_gateway_static") == {p: 0.0 for p in ports}
    for seen in per_port(s, "ebpflb_gateway_last_registration_timestamp_seconds").values():
        assert before - 1 <= seen <= time.time() + 1
    assert value(s, "ebpflb_up") == 1
    assert value(s, "ebpflb_build_info", version=_version()) == 1
    assert value(s, "ebpflb_gateways") == 3
    assert value(s, "ebpflb_service_datagrams_total") == 600
    assert value(s, "ebpflb_registrations_accepted_total") == 3
    assert value(s, "ebpflb_registrations_rejected_total", reason="short_payload") == 1
    assert value(s, "ebpflb_registrations_rejected_total", reason="not_owner") == 0
    assert value(s, "ebpflb_unbalanced_datagrams_total", reason="no_gateway_passed") == 0
    assert value(s, "ebpflb_gateways_expired_total") == 0
    assert value(s, "ebpflb_schedule_rebuilds_total") >= 1  # changes close together share a build
    assert value(s, "ebpflb_flow_table_size") == 65536
    assert value(s, "ebpflb_flows_created_total") == 0
    assert value(s, "ebpflb_interface_attached", interface="lo", mode="skb") == 1


def test_totals_never_go_back_when_gateways_leave(netns: NetNS, pin_path: str) -> None:
    """A departed gateway's datagrams stay in ebpflb_departed_gateways_*, also once a new
    gateway reuses its slot (the kernel then moves its counters there)."""
    load(netns, pin_path)

    def total(s: dict) -> float:
        return sum(per_port(s, "ebpflb_gateway_packets_total").values()) + value(
            s, "ebpflb_departed_gateways_packets_total"
        )

    with netns.entered(), gateways(2) as gws, Sender(4, LOOPBACK[4]) as sender:
        registered(netns, pin_path, gws, (1, 1))
        sender.send(100)
        assert wait_for_total(gws, 100) == 100
        first = samples_of(metrics_text(netns, pin_path))
        gws[0].register(0)  # leaves; its slot is free
        assert wait_until(lambda: len(per_port(samples_of(metrics_text(netns, pin_path)), "ebpflb_gateway_up")) == 1, 5)
        left = samples_of(metrics_text(netns, pin_path))
        with Gateway() as newcomer:  # takes the free slot
            newcomer.register(1)
            assert wait_until(
                lambda: newcomer.port in per_port(samples_of(metrics_text(netns, pin_path)), "ebpflb_gateway_up"), 5
            )
            reused = samples_of(metrics_text(netns, pin_path))
            sender.send(100)
            assert wait_for_total([gws[1], newcomer], 150) == 150
            after = samples_of(metrics_text(netns, pin_path))
    assert total(first) == total(left) == total(reused) == 100
    assert value(left, "ebpflb_departed_gateways_packets_total") == 50
    assert value(reused, "ebpflb_departed_gateways_packets_total") == 50
    assert per_port(reused, "ebpflb_gateway_packets_total")[newcomer.port] == 0  # starts from nothing
    assert total(after) == 200
    assert value(after, "ebpflb_departed_gateways_bytes_total") == 50 * UDP_LENGTH


def test_metrics_without_an_instance_say_so(netns: NetNS, pin_path: str) -> None:
    result = netns.ebpflb("metrics", "--pin-path", pin_path)
    assert result.returncode == 1
    assert value(samples_of(result.stdout), "ebpflb_up") == 0
    assert result.stderr.count("\n") == 1 and "nothing is loaded" in result.stderr and "Traceback" not in result.stderr


def scrape(ns: NetNS, address: str) -> str:
    with ns.entered():  # the exporter listens inside the test's namespace
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            assert response.status == 200
            return response.read().decode()


def without_times(text: str) -> dict:
    """Samples that do not move between two reads of an idle instance."""
    return {k: v for k, v in samples_of(text).items() if k[0] != "ebpflb_gateway_last_registration_timestamp_seconds"}


class Served:
    """A process that prints `... http://HOST:PORT/metrics ...` once it serves."""

    def __init__(self, ns: NetNS, *args: str) -> None:
        self.proc = ns.popen(
            sys.executable, "-m", "ebpflb", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []

    def address(self, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"http://([^/\s]+)/metrics", line)
            if found:
                return found.group(1)
        raise AssertionError(f"no metrics address printed: {self.lines} {self.stop()}")

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, "".join(self.lines) + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def test_the_exporter_serves_the_same_over_http_and_stops_on_sigterm(netns: NetNS, pin_path: str) -> None:
    exporter = Served(netns, "exporter", "--listen", "127.0.0.1:0", "--pin-path", pin_path)
    try:
        address = exporter.address()
        assert value(samples_of(scrape(netns, address)), "ebpflb_up") == 0  # not loaded yet: it still serves
        load(netns, pin_path)
        with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
            registered(netns, pin_path, gws, WEIGHTS)
            sender.send(60)
            assert wait_for_total(gws, 60) == 60
            served = scrape(netns, address)  # read anew: the instance loaded after the exporter started
            printed = metrics_text(netns, pin_path)
        assert without_times(served) == without_times(printed)
        assert per_port(samples_of(served), "ebpflb_gateway_packets_total") == {
            gw.port: 10.0 * w for gw, w in zip(gws, WEIGHTS)
        }
        code, out, err = exporter.stop()
    finally:
        exporter.kill()
    assert code == 0, err
    assert "stopped by SIGTERM" in out
    assert "Traceback" not in err
    assert "cannot read the instance" in err and "readable again" in err  # said once each, not per scrape
    assert err.count("cannot read the instance") == 1


def test_run_serves_metrics_from_the_foreground_process(netns: NetNS, pin_path: str) -> None:
    run = Served(netns, "run", "lo", "--metrics-listen", "127.0.0.1:0", "--pin-path", pin_path)
    try:
        address = run.address()
        with netns.entered(), gateways(1) as gws, Sender(4, LOOPBACK[4]) as sender:
            registered(netns, pin_path, gws, (5,))
            sender.send(10)
            assert wait_for_total(gws, 10) == 10
            s = samples_of(scrape(netns, address))
        assert value(s, "ebpflb_up") == 1
        assert per_port(s, "ebpflb_gateway_packets_total") == {gws[0].port: 10}
        code, out, err = run.stop()
    finally:
        run.kill()
    assert code == 0, err
    assert "removed" in out and "Traceback" not in err
    with netns.entered(), socket.socket() as probe:  # the server is gone with the process
        assert probe.connect_ex(("127.0.0.1", int(address.rsplit(":", 1)[1]))) != 0


def test_bad_listen_addresses_are_usage_errors(netns: NetNS, pin_path: str) -> None:
    for args in (("exporter", "--listen", "nonsense"), ("run", "lo", "--metrics-listen", "1.2.3.4:99999")):
        result = netns.ebpflb(*args, "--pin-path", pin_path)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and "HOST:PORT" in result.stderr, result.stderr
    with netns.entered(), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        result = netns.ebpflb("exporter", "--listen", busy, "--pin-path", pin_path)
    assert result.returncode == 1 and "cannot listen on" in result.stderr and "Traceback" not in result.stderr


def _version() -> str:
    from ebpflb import __version__

    return __version__
