"""`python -m ebpflb.demo` (what `make demo` runs), piped: plain lines, a summary whose shares
match the weights, a real expiry, and nothing left behind, also after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ..netns import REPO

pytestmark = pytest.mark.kernel

DEMO = [sys.executable, "-m", "ebpflb.demo"]
BPFFS = "/sys/fs/bpf"
ANSI = re.compile(r"\x1b\[")
SHARE = re.compile(r"^  gateway (\d+)  weight\s+(\d+)  target\s+([\d.]+)%  measured\s+([\d.]+)%$")
PHASE = re.compile(r"^phase (\d): .*\((\d+\.\d) s, (\d+) datagrams balanced\)$")
EXPIRY = re.compile(r"^expiry: gateway (\d+) stopped heartbeating at [\d.]+ s and expired ([\d.]+) s later")
TOTALS = re.compile(r"^datagrams: sent (\d+), received by gateways (\d+), lost (-?\d+)$")
STARTED = re.compile(r"^started gateway process (\d+) on port (\d+)")
CREATED = re.compile(r"^created network namespace (\S+)")
PINS = re.compile(r"pins in (/sys/fs/bpf/\S+)$")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def created_things(lines: list[str]) -> tuple[str, str, list[int]]:
    """The namespace, pin directory and gateway pids the demo says it created."""
    ns = next(m.group(1) for line in lines if (m := CREATED.match(line)))
    pins = next(m.group(1) for line in lines if (m := PINS.search(line)))
    pids = [int(m.group(1)) for line in lines if (m := STARTED.match(line))]
    return ns, pins, pids


def assert_nothing_left(ns: str, pins: str, pids: list[int]) -> None:
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not os.path.exists(f"/run/netns/{ns}")
    assert not os.path.exists(pins)
    assert [pid for pid in pids if alive(pid)] == []


def test_demo_piped_balances_by_weight_expires_and_cleans_up(bpffs: str) -> None:
    started = time.monotonic()
    done = subprocess.run(DEMO, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    took = time.monotonic() - started
    assert done.returncode == 0, f"demo failed:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert not ANSI.search(out), "piped output must be plain, without terminal escapes"
    lines = out.splitlines()
    assert took < 45, f"the demo took {took:.0f} s"

    ns, pins, pids = created_things(lines)
    assert len(pids) == 3
    assert_nothing_left(ns, pins, pids)
    assert "cleanup: left behind: nothing" in lines

    summary = lines[lines.index("Summary") :]
    phases: dict[int, dict[int, tuple[int, float, float]]] = {}
    current = 0
    for line in summary:
        if m := PHASE.match(line):
            current = int(m.group(1))
            phases[current] = {}
            assert float(m.group(2)) >= 5.0 and int(m.group(3)) >= 5000, line
        elif m := SHARE.match(line):
            phases[current][int(m.group(1))] = (int(m.group(2)), float(m.group(3)), float(m.group(4)))

    assert {p: {port: w for port, (w, _, _) in rows.items()} for p, rows in phases.items()} == {
        1: {7001: 1, 7002: 2, 7003: 3},
        2: {7001: 4, 7002: 2, 7003: 3},
        3: {7001: 4, 7003: 3},  # 7002 expired: its share went to the rest
    }
    for rows in phases.values():
        total_weight = sum(w for w, _, _ in rows.values())
        for port, (weight, target, measured) in rows.items():
            assert target == pytest.approx(100 * weight / total_weight, abs=0.05)
            assert measured == pytest.approx(target, abs=1.0), f"gateway {port}: {measured}% for a {target}% weight"

    expiry = next(m for line in summary if (m := EXPIRY.match(line)))
    assert int(expiry.group(1)) == 7002
    # last heartbeat 0-1 s before the silence, expiry 3 s after it
    assert 1.8 <= float(expiry.group(2)) <= 4.0, expiry.group(0)

    totals = next(m for line in summary if (m := TOTALS.match(line)))
    sent, received, lost = (int(g) for g in totals.groups())
    assert sent > 20000 and received == sent and lost == 0


def test_demo_without_bpffs_mounts_it_and_ctrl_c_removes_everything(bpffs: str) -> None:
    """As on a fresh machine: no bpffs (in a private mount namespace of the demo's own), then
    Ctrl-C in the middle of the show."""
    no_bpffs = f"umount {BPFFS} 2>/dev/null; mountpoint -q {BPFFS} && exit 3; exec " + " ".join(DEMO)
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", no_bpffs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "phase 1:" in line:  # the show is running: gateways, namespace and pins all exist
                break
        assert f"mounted bpffs at {BPFFS}" in lines, lines
        ns, pins, pids = created_things(lines)
        # the pins live in the demo's own bpffs mount: look through its root
        assert os.path.exists(f"/proc/{proc.pid}/root{pins}") and all(alive(pid) for pid in pids)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    lines += rest.splitlines()
    assert f"cleanup: unmounted {BPFFS} (the demo had mounted it)" in lines
    assert "cleanup: left behind: nothing" in lines
    assert_nothing_left(ns, pins, pids)
