"""`ebpflb trace` against the real trace pipe: an instance loaded with -t, gateways that register,
change weight, get rejected, are removed and expire; the command shows exactly those events."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Iterator

import pytest

from ebpflb.cli.trace_events import TRACE_DIRS

from ..netns import NetNS
from ..traffic import LOOPBACK, REG_PORT, Gateway, cli_ok, wait_until
from .test_registration import expect_counters, poke, table
from .test_run_mode import RunProcess

pytestmark = pytest.mark.kernel

TRACE = [sys.executable, "-m", "ebpflb", "trace"]

SOURCE_ADDRESS = "10.202.0.1"  # on lo of the test namespace: arrives on lo, but not from 127/8


def drain_trace_pipe() -> None:
    """Empties the trace pipe, so only what a test causes is read after it."""
    pipe = next(
        (os.path.join(d, "trace_pipe") for d in TRACE_DIRS if os.path.exists(os.path.join(d, "trace_pipe"))), None
    )
    if pipe is None:
        # events of earlier tests stay in the kernel's buffer while tracefs is unmounted: mount it
        # to drain them (the session fixture unmounts it again if it was not mounted before)
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
        pipe = "/sys/kernel/tracing/trace_pipe"
    fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 65536):
                pass
    finally:
        os.close(fd)


def trace(ns: NetNS, pin_path: str, *args: str) -> subprocess.Popen:
    return ns.popen(
        sys.executable,
        "-m",
        "ebpflb",
        "trace",
        "--pin-path",
        pin_path,
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"trace did not stop: {out} {err}") from None
    assert proc.returncode == 0, err
    return out, err


@contextlib.contextmanager
def traced_instance(ns: NetNS, pin_path: str, mode: str) -> Iterator[None]:
    if mode == "kernel":
        cli_ok(ns, "load", "-t", "-e", "1", "lo", "--pin-path", pin_path)
        yield
        return
    with RunProcess(ns, "-t", "-u", "-e", "1", "lo", "--pin-path", pin_path) as run:
        run.started()
        yield
        assert run.stop() == 0


def exercise(ns: NetNS, pin_path: str) -> tuple[int, int, list[tuple]]:
    """Every kind of event, each awaited through the counters; returns the two gateway ports
    and the events the trace must show, in order: (event, port, weight, slot, reason)."""
    ns.ip("addr", "add", f"{SOURCE_ADDRESS}/32", "dev", "lo")
    with ns.entered(), Gateway() as first, Gateway() as second:
        a, b = first.port, second.port
        first.register(3)
        expect_counters(pin_path, accepted=1)
        first.register(5)
        expect_counters(pin_path, accepted=2)
        second.register(70000)
        expect_counters(pin_path, accepted=2, weight_range=1)
        second.sock.sendto(b"\x00\x00", (LOOPBACK[4], REG_PORT))
        expect_counters(pin_path, accepted=2, weight_range=1, short_payload=1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind((SOURCE_ADDRESS, b))  # same port as the second gateway: one filter
            stranger.sendto(struct.pack("!I", 1), (LOOPBACK[4], REG_PORT))
        expect_counters(pin_path, accepted=2, weight_range=1, short_payload=1, not_loopback=1)
        second.register(2)
        expect_counters(pin_path, accepted=3, weight_range=1, short_payload=1, not_loopback=1)
        first.register(0)
        expect_counters(pin_path, accepted=4, weight_range=1, short_payload=1, not_loopback=1)

        def expired() -> bool:
            poke()
            return not table(pin_path)

        assert wait_until(expired, 4.0, interval=0.05)
    expected = [
        ("add", a, 3, 0, None),
        ("weight", a, 5, None, None),
        ("reject", b, 70000, None, "weight"),
        ("reject", b, None, None, "short"),
        ("reject", b, None, None, "source"),
        ("add", b, 2, 1, None),
        ("remove", a, None, None, None),
        ("expire", b, None, None, None),
    ]
    return a, b, expected


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
def test_trace_shows_each_event(netns: NetNS, pin_path: str, mode: str) -> None:
    drain_trace_pipe()
    with traced_instance(netns, pin_path, mode):
        # the gateway ports are not known before the sockets exist: filter afterwards
        with RunProcess(netns, "--json", "--timeout", "30", "--pin-path", pin_path, command=TRACE) as follower:
            assert follower.wait_for("following", stderr=True), follower.output()
            a, b, expected = exercise(netns, pin_path)
            time.sleep(0.3)
            assert follower.stop(signal.SIGINT) == 0  # Ctrl-C: a clean stop
        err = "\n".join(follower.err)
    events = [json.loads(line) for line in follower.out]
    ours = [(e["event"], e["port"], e["weight"], e["slot"], e["reason"]) for e in events if e["port"] in (a, b)]
    assert ours == expected
    assert all(abs(e["wall"] - time.time()) < 60 for e in events)
    assert "loaded without -t" not in err


def test_trace_count_and_port_filter_in_the_readable_format(netns: NetNS, pin_path: str) -> None:
    drain_trace_pipe()
    cli_ok(netns, "load", "-t", "lo", "--pin-path", pin_path)
    with netns.entered(), Gateway() as other, Gateway() as gw:
        proc = trace(netns, pin_path, "--count", "2", "--timeout", "20", "--port", str(gw.port))
        other.register(9)  # filtered out
        gw.register(4)
        gw.register(6)
        gw.register(1)  # after --count 2: not shown
        out, err = finish(proc)
    lines = out.splitlines()
    assert lines[0].split() == ["time", "event", "port", "weight", "detail"]
    rows = [line.split() for line in lines[1:]]
    assert [row[1:] for row in rows] == [["add", str(gw.port), "4", "slot", "1"], ["weight", str(gw.port), "6"]]
    for row in rows:
        time.strptime(row[0].split(".")[0], "%H:%M:%S")


def test_trace_without_t_gives_the_hint(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    proc = trace(netns, pin_path, "--timeout", "4", "--port", "1")
    out, err = finish(proc)
    assert f"no events yet: the instance at {pin_path} was loaded without -t" in " ".join(err.split())
    assert out.splitlines()[1:] == []
