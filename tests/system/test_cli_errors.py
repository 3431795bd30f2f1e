"""Bad input to the real CLI: exactly one line on stderr, no traceback, a non-zero exit, and
the running instance untouched (same `status --json`, `gateways --json`, XDP program).

Over 300 lines because the table of bad inputs is the test: each case with its one expected
line, checked against the untouched instance."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from typer.testing import CliRunner

from ebpflb.cli import app
from ebpflb.cli.run_lock import lock_path
from ebpflb.dataplane import Instance

from ..netns import REPO, NetNS
from ..traffic import LOOPBACK, Gateway, Sender, cli_ok, wait_for_total, wait_until
from .test_run_mode import RunProcess, assert_gone
from .test_run_mode import remove_stale_lock as remove_lock_left_behind

pytestmark = pytest.mark.kernel

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@dataclass
class Running:
    """An instance loaded on lo in its own namespace, with two registered gateways that
    have received traffic; `expected` is what status and gateways must keep showing."""

    ns: NetNS
    pin_path: str
    gateways: list[Gateway]
    expected: dict

    def cli(self, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess:
        if as_nobody:
            return self.ns.run(*NOBODY, sys.executable, "-m", "ebpflb", *args, cwd=str(REPO))
        return self.ns.ebpflb(*args)


def xdp_prog_id(ns: NetNS, ifname: str = "lo") -> Optional[int]:
    link = json.loads(ns.ip("-j", "-d", "link", "show", "dev", ifname))[0]
    return link.get("xdp", {}).get("prog", {}).get("id")


def cli_json_in_process(ns: NetNS, *args: str) -> Any:
    """The CLI's own command parsing and JSON output, run in this process inside the namespace:
    the same result as the subprocess, without paying the CLI's start-up for every check."""
    with ns.entered():
        result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"ebpflb {' '.join(args)} failed: {result.output.strip()}"
    return json.loads(result.stdout)


def observed_state(ns: NetNS, pin_path: str) -> dict:
    """`status --json`, `gateways --json`, the program on lo, and the pins."""
    rows = {row["port"]: row for row in cli_json_in_process(ns, "gateways", "--json", "--pin-path", pin_path)}
    for row in rows.values():
        row.pop("age_s")  # the only field that moves by itself
    return {
        "status": cli_json_in_process(ns, "status", "--json", "--pin-path", pin_path),
        "gateways": rows,
        "xdp_prog_id": xdp_prog_id(ns),
        "pins": sorted(os.listdir(pin_path)),
    }


def remove_instance(pin_path: str) -> None:
    if Path(pin_path).exists():
        try:
            Instance(pin_path).unload()
        except Exception:
            subprocess.run(["rm", "-rf", pin_path], check=False)


@pytest.fixture(scope="module")
def running(bpffs: str) -> Iterator[Running]:
    ns = NetNS("cli")
    pin_path = f"{bpffs}/ebpflb-test-{uuid.uuid4().hex[:12]}"
    made: list[Gateway] = []
    try:
        cli_ok(ns, "load", "lo", "-e", "600", "--pin-path", pin_path)
        with ns.entered(), Sender(4, LOOPBACK[4]) as sender:
            made.extend(Gateway(4) for _ in range(2))
            for gw, weight in zip(made, (1, 3)):
                gw.register(weight)
            assert wait_until(lambda: len(Instance(pin_path).snapshot().gateways) == 2, 2.0)
            sender.send(8)
            assert wait_for_total(made, 8) == 8
        yield Running(ns, pin_path, made, observed_state(ns, pin_path))
    finally:
        for gw in made:
            gw.close()
        ns.ebpflb("unload", "--pin-path", pin_path)
        remove_instance(pin_path)
        ns.delete()


@pytest.fixture
def absent(bpffs: str) -> Iterator[str]:
    """A pin directory on bpffs where nothing is loaded (removed after, whatever happened)."""
    path = f"{bpffs}/ebpflb-test-{uuid.uuid4().hex[:12]}"
    yield path
    remove_instance(path)


def case(
    name: str,
    args: list[str],
    says: str,
    *,
    as_nobody: bool = False,
    counters: Optional[dict] = None,
):
    """One bad command line; `counters` are rejection counters it may raise (by reason)."""
    return pytest.param(args, says, as_nobody, counters or {}, id=name)


CASES = [
    case("unknown-interface", ["load", "eth0", "--pin-path", "{absent}"], "no network interface named 'eth0'"),
    case("unknown-interface-same-pin", ["load", "eth0", "--pin-path", "{pin}"], "no network interface named 'eth0'"),
    case("port-0", ["load", "lo", "--port", "0", "--pin-path", "{absent}"], "--port 0 is not a UDP port"),
    case("port-65536", ["load", "lo", "--port", "65536", "--pin-path", "{absent}"], "--port 65536 is not a UDP port"),
    case("reg-port-70000", ["load", "lo", "--reg-port", "70000", "--pin-path", "{absent}"], "--reg-port 70000"),
    case("ports-equal", ["load", "lo", "--port", "3000", "--pin-path", "{absent}"], "must differ"),
    case("expiry-0", ["load", "lo", "-e", "0", "--pin-path", "{absent}"], "expiry 0.0 s is out of range"),
    case(
        "mode-bogus", ["load", "lo", "--mode", "bogus", "--pin-path", "{absent}"], "--mode must be auto, native or skb"
    ),
    case("second-load", ["load", "lo", "--pin-path", "{pin}"], "already loaded"),
    case(
        "second-load-other-options",
        ["load", "lo", "--port", "4000", "-e", "1", "--drop-without-gateway", "--pin-path", "{pin}"],
        "already loaded",
    ),
    case("other-pin-on-busy-lo", ["load", "lo", "--pin-path", "{absent}"], "lo already has another XDP program"),
    case("not-bpffs", ["load", "lo", "--pin-path", "{tmp}/pins"], "is not a mounted BPF filesystem"),
    case("unload-nothing", ["unload", "--pin-path", "{absent}"], "nothing is loaded"),
    case("status-nothing", ["status", "--pin-path", "{absent}"], "nothing is loaded"),
    case("status-json-nothing", ["status", "--json", "--pin-path", "{absent}"], "nothing is loaded"),
    case("gateways-nothing", ["gateways", "--pin-path", "{absent}"], "nothing is loaded"),
    case("gateways-json-nothing", ["gateways", "--json", "--pin-path", "{absent}"], "nothing is loaded"),
    case("weights-set-nothing", ["weights", "set", "5000", "2", "--pin-path", "{absent}"], "nothing is loaded"),
    case("gateways-add-nothing", ["gateways", "add", "5000", "--pin-path", "{absent}"], "nothing is loaded"),
    case(
        "weights-set-unknown-port",
        ["weights", "set", "5000", "2", "--pin-path", "{pin}"],
        "no gateway on that port",
        counters={"unknown_gateway": 1},
    ),
    case(
        "gateways-add-weight-0",
        ["gateways", "add", "5000", "--weight", "0", "--pin-path", "{pin}"],
        "weight of at least 1",
    ),
    case("weights-set-port-0", ["weights", "set", "0", "2", "--pin-path", "{pin}"], "port"),
    case("weights-set-weight-65536", ["weights", "set", "{gw0}", "65536", "--pin-path", "{pin}"], "65536"),
    case("gateways-add-port-70000", ["gateways", "add", "70000", "--pin-path", "{pin}"], "70000"),
    case(
        "gateways-add-weight-65536",
        ["gateways", "add", "5000", "--weight", "65536", "--pin-path", "{pin}"],
        "65536",
    ),
    case("load-without-interface", ["load", "--pin-path", "{pin}"], "interface"),
    case("unknown-command", ["frobnicate"], "frobnicate"),
    case("unknown-option", ["status", "--bogus", "--pin-path", "{pin}"], "--bogus"),
    case("nobody-load", ["load", "lo", "--pin-path", "{absent}"], "needs root", as_nobody=True),
    case("nobody-unload", ["unload", "--pin-path", "{pin}"], "needs root", as_nobody=True),
    case("nobody-status", ["status", "--json", "--pin-path", "{pin}"], "root", as_nobody=True),
    case("nobody-gateways", ["gateways", "--pin-path", "{pin}"], "root", as_nobody=True),
    case("nobody-weights-set", ["weights", "set", "{gw0}", "9", "--pin-path", "{pin}"], "root", as_nobody=True),
    case("nobody-gateways-add", ["gateways", "add", "5000", "--pin-path", "{pin}"], "root", as_nobody=True),
]


@pytest.mark.parametrize("args, says, as_nobody, counters", CASES)
def test_bad_input_is_one_line_and_changes_nothing(
    running: Running,
    absent: str,
    tmp_path: Path,
    args: list[str],
    says: str,
    as_nobody: bool,
    counters: dict,
) -> None:
    fill = {"{pin}": running.pin_path, "{absent}": absent, "{gw0}": str(running.gateways[0].port)}
    argv = [fill.get(a, a).replace("{tmp}", str(tmp_path)) for a in args]
    result = running.cli(*argv, as_nobody=as_nobody)

    assert result.returncode != 0, f"exit 0 for bad input; stdout: {result.stdout!r}"
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{result.stderr}"
    assert says in lines[0]
    assert lines[0].startswith("error: ")

    expected = copy.deepcopy(running.expected)
    for reason, delta in counters.items():
        expected["status"]["counters"]["registrations_rejected"][reason] += delta
    assert observed_state(running.ns, running.pin_path) == expected
    running.expected = expected
    assert not Path(absent).exists(), f"{absent} was created by a failing command"
    assert not (tmp_path / "pins").exists()


def test_refused_load_leaves_no_pin_directory(running: Running, absent: str) -> None:
    result = running.cli("load", "lo", "--pin-path", absent)
    assert result.returncode != 0 and "already has another XDP program" in result.stderr
    assert not Path(absent).exists(), f"{absent} is left behind"
    unload = running.cli("unload", "--pin-path", absent)
    assert unload.returncode != 0 and "nothing is loaded" in unload.stderr


def test_running_instance_still_balances(running: Running) -> None:
    """After every bad input above, the same program still sends 1:3 to the two gateways."""
    assert xdp_prog_id(running.ns) == running.expected["xdp_prog_id"]
    first, second = running.gateways
    before = (first.count, second.count)
    with running.ns.entered(), Sender(4, LOOPBACK[4]) as sender:
        sender.send(40)
        assert wait_for_total(running.gateways, sum(before) + 40) == sum(before) + 40
    assert (first.count - before[0], second.count - before[1]) == (10, 30)


def test_stale_pinned_map_is_refused_clearly(netns: NetNS, pin_path: str) -> None:
    """A map of another shape pinned as lb_state: load refuses with one clear line and
    leaves the directory and lo as they were."""
    os.makedirs(pin_path)
    subprocess.run(
        [
            "bpftool",
            "map",
            "create",
            f"{pin_path}/lb_state",
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            "lb_state",
        ],
        check=True,
        capture_output=True,
    )
    result = netns.ebpflb("load", "lo", "--pin-path", pin_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip("\n").splitlines()
    assert len(lines) == 1, result.stderr
    assert "made by another version of ebpflb" in lines[0] and "unload" in lines[0]
    assert sorted(os.listdir(pin_path)) == ["lb_state"]
    assert xdp_prog_id(netns) is None
    for command in (["status", "--json"], ["gateways", "--json"]):
        other = netns.ebpflb(*command, "--pin-path", pin_path)
        assert other.returncode != 0 and "Traceback" not in other.stderr
        assert len(other.stderr.strip("\n").splitlines()) == 1, other.stderr


XDP_PASS_C = """// SPDX-License-Identifier: GPL-2.0
/* Another tool's XDP program: passes everything. */
__attribute__((section("xdp"), used)) int pass_all(void *ctx) { return 2; /* XDP_PASS */ }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def test_foreign_xdp_program_is_refused_and_kept(netns: NetNS, pin_path: str, tmp_path: Path) -> None:
    source, obj = tmp_path / "pass.bpf.c", tmp_path / "pass.bpf.o"
    source.write_text(XDP_PASS_C)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-c", str(source), "-o", str(obj)], check=True)
    netns.ip("link", "set", "dev", "lo", "xdpgeneric", "obj", str(obj), "sec", "xdp")
    foreign = xdp_prog_id(netns)
    assert foreign

    result = netns.ebpflb("load", "lo", "--pin-path", pin_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip("\n").splitlines()
    assert len(lines) == 1, result.stderr
    assert f"lo already has another XDP program (id {foreign})" in lines[0]
    assert xdp_prog_id(netns) == foreign
    assert not any(Path(pin_path).glob("*")), "a refused load left pins behind"


def test_unload_after_a_killed_run_leaves_nothing(netns: NetNS, pin_path: str) -> None:
    """`kill -9` of `ebpflb run` leaves its pins, its program and its lock file; `unload` removes all three."""
    try:
        with RunProcess(netns, "lo", "--pin-path", pin_path) as run:
            run.started()
            run.kill9()
        assert os.path.exists(lock_path(pin_path)), "a killed run left no lock file: nothing to test"
        result = netns.ebpflb("unload", "--pin-path", pin_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"ebpflb unloaded from lo; removed {pin_path}"
        assert_gone(netns, pin_path)
    finally:
        remove_lock_left_behind(pin_path)
