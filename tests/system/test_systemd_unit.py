"""contrib/systemd/ebpflb.service: `systemd-analyze verify` accepts it, and its ExecStart,
run as systemd runs it (readiness on $NOTIFY_SOCKET, SIGTERM to stop), survives a restart
without losing a registered gateway or the dataplane in between."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..netns import REPO, NetNS
from ..traffic import LOOPBACK, Gateway, Sender, gateways_json, wait_for_total, wait_until

pytestmark = pytest.mark.kernel

UNIT = REPO / "contrib" / "systemd" / "ebpflb.service"
CONFIG_IN_UNIT = "/etc/ebpflb/ebpflb.toml"


def unit_value(key: str) -> str:
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


def verify(unit_text: str, root: Path) -> str:
    """What `systemd-analyze verify` says of the unit in a root holding the system's units and
    an `ebpflb` at the unit's ExecStart path; empty when it accepts the unit."""
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
        program = root / shlex.split(unit_value("ExecStart"))[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text(f'#!/bin/sh\nexec {sys.executable} -m ebpflb "$@"\n')
        program.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system/ebpflb.service").write_text(unit_text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "/etc/systemd/system/ebpflb.service"],
        capture_output=True,
        text=True,
    )
    return f"exit {result.returncode}: {result.stdout}{result.stderr}" if result.returncode else (
        result.stdout + result.stderr
    ).strip()


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == ""
    # and it would have said so: a misspelt key and a bad value are reported
    assert "Unknown key 'ProtectSytem'" in verify(UNIT.read_text().replace("ProtectSystem=", "ProtectSytem="), tmp_path)
    assert "notifyy" in verify(UNIT.read_text().replace("Type=notify", "Type=notifyy"), tmp_path)


def test_the_unit_runs_the_config_file_and_waits_for_readiness() -> None:
    argv = shlex.split(unit_value("ExecStart"))
    assert argv[1:4] == ["run", "--config", CONFIG_IN_UNIT]
    assert unit_value("Type") == "notify" and unit_value("KillSignal") == "SIGTERM"
    assert "--keep-loaded" in argv  # what makes a restart keep the gateways


class Manager:
    """Stands in for systemd: a notification socket, and the unit's ExecStart started in the
    namespace with $NOTIFY_SOCKET set."""

    def __init__(self, ns: NetNS, tmp_path: Path, config: str) -> None:
        self.ns = ns
        self.path = str(tmp_path / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(20)
        argv = shlex.split(unit_value("ExecStart"))
        self.argv = [sys.executable, "-m", "ebpflb", *(config if a == CONFIG_IN_UNIT else a for a in argv[1:])]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, NOTIFY_SOCKET=self.path)
        self.proc = self.ns.popen(*self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.sock.recv(64) == b"READY=1"

    def stop(self) -> tuple[int, str, str]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.sock.recv(64) == b"STOPPING=1"
        out, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.sock.close()


def test_a_restart_as_systemd_does_it_keeps_the_registered_gateways(
    netns: NetNS, pin_path: str, tmp_path: Path
) -> None:
    config = tmp_path / "ebpflb.toml"
    config.write_text(f'interfaces = ["lo"]\npin_path = "{pin_path}"\n')
    manager = Manager(netns, tmp_path, str(config))
    try:
        with netns.entered(), Gateway() as gw, Sender(4, LOOPBACK[4]) as sender:
            manager.start()
            gw.register(7)
            assert wait_until(lambda: gw.port in gateways_json(netns, pin_path), 5)
            sender.send(100)
            assert wait_for_total([gw], 100) == 100

            code, out, err = manager.stop()
            assert code == 0, err
            assert "left loaded" in out and "Traceback" not in err
            sender.send(50)  # between stop and start: the kernel balances on, with no process
            assert wait_for_total([gw], 150) == 150

            manager.start()
            code, out, err = manager.stop()
            assert code == 0, err
            assert "adopted the running instance" in out and "(1 gateway(s)" in out
            row = gateways_json(netns, pin_path)[gw.port]
            assert (row["weight"], row["packets"]) == (7, 150)
    finally:
        manager.close()
