"""The CLI's command-line handling in this process, with no kernel: exit codes (2 for a wrong
command line, 1 for a command that could not be done), one-line errors, help, and what
`gateways` and `gateways add` print, with the instance patched out where one would be needed."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import pytest
from typer.testing import CliRunner

from ebpflb import cli
from ebpflb.bpf.layout import CtlOp, GlobalCounters, LbState
from ebpflb.cli import common
from ebpflb.cli import run_lock as run_module
from ebpflb.dataplane import GatewayInfo, Snapshot


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def run_main(entry: Callable[[], None]) -> Ran:
    """Runs a console-script entry point with its output captured; returns its exit code."""
    with CliRunner().isolation() as (stdout, stderr, _):
        code = 0
        try:
            entry()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return Ran(code, stdout.getvalue().decode(), stderr.getvalue().decode())


def ebpflb(*args: str) -> Ran:
    """`ebpflb ARGS` as the console script runs it (main(), not Typer's standalone mode)."""
    return run_main(lambda: cli.main(list(args)))


def one_error_line(ran: Ran) -> str:
    assert "Traceback" not in ran.stdout + ran.stderr
    lines = ran.stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{ran.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------- help and exit codes


@pytest.mark.parametrize("args", [[], ["weights"]], ids=["ebpflb", "ebpflb-weights"])
def test_no_arguments_prints_help_only(args: list[str]) -> None:
    ran = ebpflb(*args)
    assert "Usage:" in ran.stdout
    assert ran.stderr == "", f"more than help: {ran.stderr!r}"
    assert ran.code == 2  # no command is a wrong command line, as click has it


USAGE_ERRORS = [
    pytest.param(["frobnicate"], "frobnicate", id="unknown-command"),
    pytest.param(["status", "--bogus"], "--bogus", id="unknown-option"),
    pytest.param(["weights", "set", "7001"], "Missing argument 'weight'", id="missing-argument"),
    pytest.param(["weights", "set", "0", "2"], "0 is not a UDP port", id="weights-set-port-0"),
    pytest.param(["weights", "set", "7001", "65536"], "65536 is out of range (0-65535)", id="weight-65536"),
    pytest.param(["weights", "set", "7001", "-1"], "-1 is out of range (0-65535)", id="weight-negative"),
    pytest.param(["weights", "set", "7001", "-12"], "-12 is out of range (0-65535)", id="weight-negative-2-digits"),
    pytest.param(["weights", "set", "-5", "2"], "-5 is not a UDP port", id="weights-set-port-negative"),
    pytest.param(["gateways", "add", "70000"], "70000 is not a UDP port", id="gateways-add-port"),
    pytest.param(["gateways", "add", "7001", "--weight", "-1"], "-1 is out of range", id="gateways-add-negative"),
    pytest.param(["gateways", "add", "7001", "--weight", "0"], "weight of at least 1", id="gateways-add-weight-0"),
    pytest.param(["load", "lo", "--mode", "bogus"], "--mode must be auto, native or skb", id="load-mode"),
    pytest.param(["run", "lo", "--mode", "bogus"], "--mode must be auto, native or skb", id="run-mode"),
    pytest.param(["load", "lo", "--port", "0"], "--port 0 is not a UDP port", id="load-port-0"),
    pytest.param(["run", "lo", "--reg-port", "70000"], "--reg-port 70000 is not a UDP port", id="run-reg-port"),
    pytest.param(["load", "lo", "--port", "3000"], "must differ", id="load-ports-equal"),
    pytest.param(["load", "lo", "-e", "0"], "expiry 0.0 s is out of range", id="load-expiry-0"),
    pytest.param(["load", "-u", "lo"], "use `ebpflb run -u IFACE...` instead", id="load-u"),
]


@pytest.mark.parametrize("args, says", USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_line(args: list[str], says: str) -> None:
    ran = ebpflb(*args)
    line = one_error_line(ran)
    assert says in line
    assert ran.code == 2, line


def test_usage_error_of_the_udp_wrr_alias_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["ebpflb_udp_wrr", "--mode", "bogus", "lo"])
    ran = run_main(cli.udp_wrr_main)
    assert "--mode must be" in one_error_line(ran)
    assert ran.code == 2


def test_runtime_errors_exit_1(tmp_path: Path) -> None:
    ran = ebpflb("status", "--pin-path", str(tmp_path / "ebpflb"))
    one_error_line(ran)
    assert ran.code == 1


def test_load_help_hides_u_and_run_help_shows_it() -> None:
    load_help = ebpflb("load", "--help")
    assert load_help.code == 0
    assert "--userspace-registrations" not in load_help.stdout and "Not for load" not in load_help.stdout
    run_help = ebpflb("run", "--help")
    assert "--userspace-registrations" in run_help.stdout


# ---------------------------------------------------------------- bpffs


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["gateways"],
        ["gateways", "--json"],
        ["gateways", "add", "7001"],
        ["weights", "set", "7001", "2"],
        ["unload"],
    ],
    ids=lambda a: "-".join(a),
)
def test_commands_name_a_missing_bpffs_mount(tmp_path: Path, args: list[str]) -> None:
    """Pins under a directory that is no bpffs: the error says so, not "nothing is loaded"."""
    pin_path = tmp_path / "xyz" / "ebpflb"
    ran = ebpflb(*args, "--pin-path", str(pin_path))
    line = one_error_line(ran)
    assert f"{pin_path.parent} is not a mounted BPF filesystem" in line
    assert "mount -t bpf bpf /sys/fs/bpf" in line
    assert ran.code == 1
    assert not pin_path.parent.exists()


# ---------------------------------------------------------------- gateways, patched instance


def gateway(port: int, weight: int, is_static: bool, age_s: float = 2.5) -> GatewayInfo:
    return GatewayInfo(slot=port % 256, port=port, weight=weight, is_static=is_static, age_s=age_s, packets=0, bytes=0)


class FakeInstance:
    """Stands in for Instance: a fixed table; control() applies ADD_STATIC to it."""

    table: list[GatewayInfo] = []
    calls: list[tuple[CtlOp, int, int]] = []

    def __init__(self, pin_path: str) -> None:
        self.pin_path = pin_path

    def check_netns(self) -> None:
        pass

    def snapshot(self, sweep: bool = True) -> Snapshot:
        return Snapshot(LbState(), GlobalCounters(), [replace(g) for g in self.table])  # read at one moment

    def control(self, op: CtlOp, port: int = 0, weight: int = 0, **fields: object) -> None:
        FakeInstance.calls.append((op, port, weight))
        old: Optional[GatewayInfo] = next((g for g in self.table if g.port == port), None)
        if old:
            old.weight, old.is_static = weight, True
        else:
            self.table.append(gateway(port, weight, True, 0.0))


@pytest.fixture
def fake_instance(monkeypatch: pytest.MonkeyPatch) -> type[FakeInstance]:
    FakeInstance.table = [gateway(7001, 5, False, 2.375), gateway(7003, 2, True, 99.0)]
    FakeInstance.calls = []
    monkeypatch.setattr(common, "Instance", FakeInstance)
    monkeypatch.setattr(common, "require_bpffs", lambda pin_path: None)
    return FakeInstance


def test_gateways_add_says_added_for_a_new_port(fake_instance: type[FakeInstance]) -> None:
    ran = ebpflb("gateways", "add", "7002", "--weight", "4")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.strip() == "gateway 7002 added with weight 4 (static: it does not expire)"
    assert fake_instance.calls == [(CtlOp.ADD_STATIC, 7002, 4)]


@pytest.mark.parametrize("port", [7001, 7003], ids=["registered", "static"])
def test_gateways_add_says_updated_for_an_existing_port(fake_instance: type[FakeInstance], port: int) -> None:
    old = next(g.weight for g in fake_instance.table if g.port == port)
    ran = ebpflb("gateways", "add", str(port), "--weight", "9")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.strip() == f"gateway {port} updated: weight {old} -> 9 (static: it does not expire)"


def test_gateways_table_shows_no_age_for_static_gateways(fake_instance: type[FakeInstance]) -> None:
    ran = ebpflb("gateways")
    assert ran.code == 0, ran.stderr
    cells = [line.split() for line in ran.stdout.splitlines()]
    rows = {c[1]: c for c in cells if c[1:2] in (["7001"], ["7003"])}
    assert rows["7001"][-5:] == ["2.4", "│", "│", "yes", "│"], rows  # registered: seconds since last heard
    assert rows["7003"][-6:] == ["-", "│", "yes", "│", "yes", "│"], rows  # static: never expires, no age; up


def test_gateways_json_has_null_age_for_static_gateways(fake_instance: type[FakeInstance]) -> None:
    ran = ebpflb("gateways", "--json")
    assert ran.code == 0, ran.stderr
    ages = {row["port"]: (row["age_s"], row["static"]) for row in json.loads(ran.stdout)}
    assert ages == {7001: (2.375, False), 7003: (None, True)}


# ---------------------------------------------------------------- the run lock unload removes


def test_only_a_lock_nobody_holds_is_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run_module, "LOCK_DIR", str(tmp_path / "run"))
    held = run_module.RunLock("/sys/fs/bpf/held")
    held.acquire()
    try:
        stale = run_module.RunLock("/sys/fs/bpf/stale")
        stale.acquire()
        os.close(stale.fd or -1)  # what kill -9 leaves: the file, with nobody holding its lock
        run_module.remove_stale_lock("/sys/fs/bpf/stale")
        assert not os.path.exists(stale.path)
        run_module.remove_stale_lock("/sys/fs/bpf/held")
        assert os.path.exists(held.path), "removed the lock of a live run"
    finally:
        held.release()
    assert not (tmp_path / "run").exists()
