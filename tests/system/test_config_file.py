"""`load --config` and `run --config` with real files: the file's options and static gateways
take effect, the command line wins over the file, and a bad file attaches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..netns import NetNS
from ..traffic import LOOPBACK, Gateway, Sender, cli_ok, gateways_json, status_json, wait_for_total

pytestmark = pytest.mark.kernel


def config_file(tmp_path: Path, pin_path: str, text: str) -> str:
    path = tmp_path / "ebpflb.toml"
    path.write_text(f'interfaces = ["lo"]\npin_path = "{pin_path}"\n{text}')
    return str(path)


def test_the_file_sets_the_options_and_its_static_gateways_take_traffic(
    netns: NetNS, pin_path: str, tmp_path: Path
) -> None:
    with netns.entered(), Gateway() as a, Gateway() as b:
        path = config_file(
            tmp_path,
            pin_path,
            "expiry = 7\nreply_nat = false\naffinity = 0\ngateway_ports = [1024, 60999]\n"
            f"[[gateway]]\nport = {a.port}\nweight = 1\n[[gateway]]\nport = {b.port}\nweight = 3\n",
        )
        said = cli_ok(netns, "load", "--config", path)  # no IFACE, no --pin-path: both from the file
        assert "2 static gateway(s)" in said
        config = status_json(netns, pin_path)["config"]
        assert (config["expiry_s"], config["reply_nat"], config["gateway_ports"]) == (7, False, [1024, 60999])
        rows = gateways_json(netns, pin_path)
        assert {p: (r["weight"], r["static"]) for p, r in rows.items()} == {a.port: (1, True), b.port: (3, True)}
        with Sender(4, LOOPBACK[4]) as sender:
            sender.send(400)
            assert wait_for_total([a, b], 400) == 400
        assert (a.count, b.count) == (100, 300)


def test_the_command_line_overrides_the_file(netns: NetNS, pin_path: str, tmp_path: Path) -> None:
    path = config_file(tmp_path, pin_path, "service_port = 2152\nreply_nat = true\nexpiry = 9\n")
    cli_ok(netns, "load", "--config", path, "--port", "2153", "--no-reply-nat")
    config = status_json(netns, pin_path)["config"]
    assert (config["service_port"], config["reply_nat"], config["expiry_s"]) == (2153, False, 9)


@pytest.mark.parametrize(
    "command, text, says",
    [
        ("load", "colour = 'red'", "unknown key 'colour'"),
        ("load", "expiry = -3", "expiry: -3 is out of range"),
        ("run", "affinity_key = 'teid'", "affinity_key: 'teid' is not one of client, gtpu"),
        ("run", "[[gateway]]\nport = 2152", "gateway port 2152 is the service or the registration port"),
        ("load", "userspace_registrations = true", "userspace_registrations needs a process to receive registrations"),
        ("load", "service_port = 3000", "the service port and the registration port must differ"),
    ],
)
def test_a_bad_file_is_one_line_and_attaches_nothing(
    netns: NetNS, pin_path: str, tmp_path: Path, command: str, text: str, says: str
) -> None:
    path = config_file(tmp_path, pin_path, text + "\n")
    result = netns.ebpflb(command, "--config", path)
    assert result.returncode == 2, result
    assert says in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    if "unknown key" in says or "out of range" in says or "one of" in says:
        assert path in result.stderr  # names the file, not only the key
    assert not Path(pin_path).exists()
    assert "xdp" not in netns.ip("link", "show", "lo")


def test_without_interfaces_anywhere_it_says_where_to_give_them(netns: NetNS, pin_path: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("expiry = 5\n")
    result = netns.ebpflb("load", "--config", str(path), "--pin-path", pin_path)
    assert result.returncode == 2 and "no interface to balance on" in result.stderr
    assert not Path(pin_path).exists()
