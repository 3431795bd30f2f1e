"""`--config FILE`: the options of `load` and `run` from TOML, each key checked with a message
that names it and the file. The command line overrides the file; the file, the defaults."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ebpflb.bpf.layout import MAX_GATEWAYS, MAX_WEIGHT
from ebpflb.dataplane.config import AFFINITY_KEYS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigFileError(Exception):
    """One line: the file, the key, what is wrong with it."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(low: float, high: float, low_open: bool = False) -> Callable[[object], Any]:
    def check(v: object) -> float:
        if not (_is_int(v) or isinstance(v, float)):
            raise ValueError(f"{v!r} is not a number")
        if not (low < v if low_open else low <= v) or v > high:  # type: ignore[operator]
            bound = "more than" if low_open else "at least"
            raise ValueError(f"{v} is out of range ({bound} {_plain(low)}, at most {_plain(high)})")
        return float(v)  # type: ignore[arg-type]

    return check


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _port(v: object) -> int:
    if not _is_int(v) or not 1 <= v <= 65535:  # type: ignore[operator]
        raise ValueError(f"{v!r} is not a UDP port (1-65535)")
    return v  # type: ignore[return-value]


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not true or false")
    return v


def _one_of(*choices: str) -> Callable[[object], str]:
    def check(v: object) -> str:
        if v not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        return v  # type: ignore[return-value]

    return check


def _text(v: object) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a non-empty string")
    return v


def _interfaces(v: object) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(i, str) and i for i in v):
        raise ValueError(f'{v!r} is not a list of interface names, e.g. ["eth0"]')
    return v


def _port_range(v: object) -> str:
    if not isinstance(v, list) or len(v) != 2 or not all(_is_int(p) for p in v) or not 1 <= v[0] <= v[1] <= 65535:
        raise ValueError(f"{v!r} is not a port range [lo, hi] with 1 <= lo <= hi <= 65535")
    return f"{v[0]}-{v[1]}"  # the form --gateway-ports takes


# TOML key -> (parameter of `load`/`run` it sets, its check, which converts to the parameter's form)
KEYS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "interfaces": ("interfaces", _interfaces),
    "service_port": ("port", _port),
    "registration_port": ("reg_port", _port),
    "expiry": ("expiry", _number(0, 365 * 86400, low_open=True)),
    "mode": ("mode", _one_of("auto", "native", "skb")),
    "trace": ("trace", _bool),
    "userspace_registrations": ("userspace", _bool),
    "drop_without_gateway": ("drop_without_gateway", _bool),
    "reply_nat": ("no_reply_nat", lambda v: not _bool(v)),  # the command line's --no-reply-nat
    "affinity": ("affinity", _number(0, 86400)),
    "affinity_key": ("affinity_key", _one_of(*AFFINITY_KEYS)),
    "gateway_ports": ("gateway_ports", _port_range),
    "balance_forwarded": ("balance_forwarded", _bool),
    "pin_path": ("pin_path", _text),
    "metrics_listen": ("metrics_listen", _text),  # `run` only
    "keep_loaded": ("keep_loaded", _bool),  # `run` only
}
GATEWAY_KEYS = ("port", "weight")


@dataclass
class ConfigFile:
    path: str
    options: dict[str, Any] = field(default_factory=dict)  # parameter name -> value
    gateways: list[tuple[int, int]] = field(default_factory=list)  # (port, weight), static, in file order


def read_config(path: str) -> ConfigFile:
    """Parses and checks the whole file; ConfigFileError names the first problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{path}: not valid TOML: {e}") from None
    config = ConfigFile(path)
    for key, value in data.items():
        if key == "gateway":
            config.gateways = _gateways(path, value)
            continue
        if key not in KEYS:
            raise ConfigFileError(f"{path}: unknown key {key!r}: the keys are {', '.join(sorted([*KEYS, 'gateway']))}")
        name, check = KEYS[key]
        try:
            config.options[name] = check(value)
        except ValueError as e:
            raise ConfigFileError(f"{path}: {key}: {e}") from None
    return config


def _gateways(path: str, tables: object) -> list[tuple[int, int]]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigFileError(f"{path}: gateway: write each one as a [[gateway]] table with port and weight")
    if len(tables) > MAX_GATEWAYS:
        raise ConfigFileError(f"{path}: gateway: {len(tables)} gateways, the table holds {MAX_GATEWAYS}")
    seen: set[int] = set()
    gateways = []
    for number, table in enumerate(tables, 1):
        where = f"{path}: gateway {number}"
        unknown = sorted(set(table) - set(GATEWAY_KEYS))
        if unknown:
            raise ConfigFileError(f"{where}: unknown key {unknown[0]!r}: a [[gateway]] has port and weight")
        if "port" not in table:
            raise ConfigFileError(f"{where}: port is missing")
        try:
            port = _port(table["port"])
        except ValueError as e:
            raise ConfigFileError(f"{where}: port: {e}") from None
        weight = table.get("weight", 1)
        if not _is_int(weight) or not 1 <= weight <= MAX_WEIGHT:
            raise ConfigFileError(f"{where}: weight: {weight!r} is out of range (1-{MAX_WEIGHT})")
        if port in seen:
            raise ConfigFileError(f"{where}: port {port} is listed twice")
        seen.add(port)
        gateways.append((port, weight))
    return gateways
