"""`--config FILE` parsing: every key converted to its option, every problem one line that
names the file and the key (no kernel: the system tests load what the file says)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpflb.cli.config_file import KEYS, ConfigFileError, read_config

FULL = """
interfaces = ["eth0", "eth1"]
service_port = 4000
registration_port = 4001
expiry = 12.5
mode = "skb"
trace = true
userspace_registrations = true
drop_without_gateway = true
reply_nat = false
affinity = 30
affinity_key = "gtpu"
gateway_ports = [2000, 3000]
balance_forwarded = true
pin_path = "/sys/fs/bpf/lb2"
metrics_listen = "[::1]:9862"
keep_loaded = true

[[gateway]]
port = 7001
weight = 10

[[gateway]]
port = 7002
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ebpflb.toml"
    path.write_text(text)
    return str(path)


def test_every_key_becomes_its_option(tmp_path: Path) -> None:
    config = read_config(write(tmp_path, FULL))
    assert config.options == {
        "interfaces": ["eth0", "eth1"],
        "port": 4000,
        "reg_port": 4001,
        "expiry": 12.5,
        "mode": "skb",
        "trace": True,
        "userspace": True,
        "drop_without_gateway": True,
        "no_reply_nat": True,
        "affinity": 30.0,
        "affinity_key": "gtpu",
        "gateway_ports": "2000-3000",
        "balance_forwarded": True,
        "pin_path": "/sys/fs/bpf/lb2",
        "metrics_listen": "[::1]:9862",
        "keep_loaded": True,
    }
    assert config.gateways == [(7001, 10), (7002, 1)]  # weight 1 unless given
    assert set(KEYS) == set(
        "interfaces service_port registration_port expiry mode trace userspace_registrations drop_without_gateway "
        "reply_nat affinity affinity_key gateway_ports balance_forwarded pin_path metrics_listen keep_loaded".split()
    )


def test_an_empty_file_sets_nothing(tmp_path: Path) -> None:
    config = read_config(write(tmp_path, "# nothing\n"))
    assert config.options == {} and config.gateways == []


def test_the_shipped_example_is_valid() -> None:
    config = read_config(str(Path(__file__).parents[2] / "contrib" / "ebpflb.toml"))
    assert config.options["interfaces"] == ["eth0"] and config.options["no_reply_nat"] is False


@pytest.mark.parametrize(
    "text, says",
    [
        ("colour = 1", "unknown key 'colour'"),
        ("service_port = 70000", "service_port: 70000 is not a UDP port"),
        ("service_port = '2152'", "service_port: '2152' is not a UDP port"),
        ("service_port = true", "service_port: True is not a UDP port"),
        ("registration_port = 0", "registration_port: 0 is not a UDP port"),
        ("expiry = 0", "expiry: 0 is out of range"),
        ("expiry = 'soon'", "expiry: 'soon' is not a number"),
        ("mode = 'fast'", "mode: 'fast' is not one of auto, native, skb"),
        ("trace = 1", "trace: 1 is not true or false"),
        ("reply_nat = 'no'", "reply_nat: 'no' is not true or false"),
        ("affinity = -1", "affinity: -1 is out of range"),
        ("affinity_key = 'teid'", "affinity_key: 'teid' is not one of client, gtpu"),
        ("gateway_ports = [3000, 2000]", "gateway_ports: [3000, 2000] is not a port range"),
        ("gateway_ports = '1024-65535'", "gateway_ports: '1024-65535' is not a port range"),
        ("interfaces = 'eth0'", "interfaces: 'eth0' is not a list of interface names"),
        ("interfaces = []", "interfaces: [] is not a list of interface names"),
        ("pin_path = ''", "pin_path: '' is not a non-empty string"),
        ("[[gateway]]\nweight = 2", "gateway 1: port is missing"),
        ("[[gateway]]\nport = 7001\nweight = 0", "gateway 1: weight: 0 is out of range (1-65535)"),
        ("[[gateway]]\nport = 7001\nweight = 65536", "gateway 1: weight: 65536 is out of range"),
        ("[[gateway]]\nport = 7001\nwieght = 2", "gateway 1: unknown key 'wieght'"),
        ("[[gateway]]\nport = 7001\n[[gateway]]\nport = 7001", "gateway 2: port 7001 is listed twice"),
        ("gateway = 7001", "gateway: write each one as a [[gateway]] table"),
        ("service_port = ", "not valid TOML"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it_and_the_file(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as raised:
        read_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read it: No such file or directory"):
        read_config(str(tmp_path / "absent.toml"))


def test_too_many_gateways(tmp_path: Path) -> None:
    text = "".join(f"[[gateway]]\nport = {10000 + i}\n" for i in range(257))
    with pytest.raises(ConfigFileError, match="257 gateways, the table holds 256"):
        read_config(write(tmp_path, text))
