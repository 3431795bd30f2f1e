"""`ebpflb top` on a loaded instance: exact datagram counts per interval in plain lines when
piped, a live table in a pseudo-terminal that Ctrl-C leaves cleanly, one line when nothing is
loaded."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import pytest

from ..netns import NetNS
from ..traffic import LOOPBACK, Gateway, Sender, cli_ok, gateways, wait_for_total, wait_until

pytestmark = pytest.mark.kernel

WEIGHTS = (1, 2, 3)
GATEWAY_LINE = re.compile(r"port (\d+) weight (\d+) \(([\d.]+)%\) \+(\d+) pkt .* (up|DOWN) age")


def test_piped_top_prints_every_interval_with_exact_counts(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    with netns.entered(), gateways(3) as gws, Sender(4, LOOPBACK[4]) as sender:
        for gw, weight in zip(gws, WEIGHTS):
            gw.register(weight)
        assert wait_until(lambda: cli_ok(netns, "gateways", "--pin-path", pin_path).count("\n") >= 4, 5)
        top = netns.popen(
            sys.executable, "-m", "ebpflb", "top", "--interval", "0.5", "-n", "3", "--pin-path", pin_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert top.stdout is not None
        assert "every 0.5 s" in top.stdout.readline()  # the first interval has begun
        sender.send(600)
        assert wait_for_total(gws, 600) == 600
        out, err = top.communicate(timeout=20)
    assert top.returncode == 0, err
    intervals = [line for line in out.splitlines() if "gateway(s) over" in line]
    assert len(intervals) == 3 and all("3 gateway(s)" in line for line in intervals)
    counted = {gw.port: 0 for gw in gws}
    for port, weight, share, packets, up in GATEWAY_LINE.findall(out):
        counted[int(port)] += int(packets)
        assert up == "up" and float(share) == round(100 * int(weight) / sum(WEIGHTS), 1)
    assert counted == {gw.port: 100 * w for gw, w in zip(gws, WEIGHTS)}


def as_terminal_foreground() -> None:
    """In the child: a session of its own whose controlling terminal is its stdin (the pty),
    so the terminal's ^C reaches it as SIGINT, as in a shell."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_top_in_a_terminal_draws_a_table_and_ctrl_c_exits_cleanly(netns: NetNS, pin_path: str) -> None:
    cli_ok(netns, "load", "lo", "--pin-path", pin_path)
    controller, terminal = pty.openpty()
    with netns.entered(), Gateway() as gw:
        gw.register(4)
        assert wait_until(lambda: str(gw.port) in cli_ok(netns, "gateways", "--pin-path", pin_path), 5)
        top = netns.popen(
            sys.executable, "-m", "ebpflb", "top", "--interval", "0.2", "--pin-path", pin_path,
            stdin=terminal, stdout=terminal, stderr=terminal, preexec_fn=as_terminal_foreground,
            env=dict(os.environ, TERM="xterm", COLUMNS="120", LINES="40"),
        )  # fmt: skip
        os.close(terminal)
        seen = b""
        try:
            deadline = time.monotonic() + 15
            while str(gw.port).encode() not in seen and time.monotonic() < deadline:
                if select.select([controller], [], [], 0.5)[0]:
                    seen += os.read(controller, 65536)
            os.write(controller, b"\x03")  # Ctrl-C, typed
            code = top.wait(timeout=10)
            with contextlib.suppress(OSError):  # EIO once the process is gone
                while select.select([controller], [], [], 0.2)[0]:
                    seen += os.read(controller, 65536)
        finally:
            if top.poll() is None:
                top.kill()
                top.wait()
            os.close(controller)
    text = seen.decode(errors="replace")
    assert code == 0, text
    assert "\x1b[" in text and "ebpflb top" in text and "pkt/s" in text and f"{gw.port} " in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


def test_top_without_an_instance_is_one_line(netns: NetNS, pin_path: str) -> None:
    result = netns.ebpflb("top", "-n", "1", "--pin-path", pin_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "nothing is loaded" in result.stderr
    bad = netns.ebpflb("top", "--interval", "0", "--pin-path", pin_path)
    assert bad.returncode == 2 and "--interval" in bad.stderr
