"""The load-time configuration (`struct lb_config`): built from the command line and checked."""

from __future__ import annotations

from ebpflb.bpf import defaults
from ebpflb.bpf.layout import LbConfig
from ebpflb.errors import EbpflbError

DEFAULT_GATEWAY_PORTS = defaults.GATEWAY_PORTS
AFFINITY_KEYS = ("client", "gtpu")  # enum affinity_key


def config_for(
    service_port: int,
    reg_port: int,
    expiry_s: float,
    trace: bool,
    userspace_reg: bool,
    drop_without_gateway: bool,
    gateway_ports: tuple[int, int] = DEFAULT_GATEWAY_PORTS,
    balance_forwarded: bool = False,
    reply_nat: bool = True,
    check_sockets: bool = True,
    affinity_s: float = 0.0,
    affinity_key: str = "client",
) -> LbConfig:
    for name, port in (("--port", service_port), ("--reg-port", reg_port)):
        if not 1 <= port <= 65535:
            raise EbpflbError(f"{name} {port} is not a UDP port: use 1-65535")
    if service_port == reg_port:
        raise EbpflbError("the service port and the registration port must differ")
    if not 0 < expiry_s <= 365 * 86400:
        raise EbpflbError(f"expiry {expiry_s} s is out of range: use more than 0 and at most a year")
    if not 0 <= affinity_s <= 86400:
        raise EbpflbError(f"--affinity {affinity_s:g} s is out of range: use 0 (off) to 86400 seconds")
    if affinity_key not in AFFINITY_KEYS:
        raise EbpflbError(f"--affinity-key must be {' or '.join(AFFINITY_KEYS)}, not {affinity_key!r}")
    low, high = gateway_ports
    if not 1 <= low <= high <= 65535:
        raise EbpflbError(f"--gateway-ports {low}-{high} is not a port range: use LO-HI with 1 <= LO <= HI <= 65535")
    return LbConfig(
        service_port=service_port,
        reg_port=reg_port,
        gw_port_min=low,
        gw_port_max=high,
        expiry_ns=int(expiry_s * 1e9),
        trace=int(trace),
        userspace_reg=int(userspace_reg),
        drop_without_gateway=int(drop_without_gateway),
        balance_forwarded=int(balance_forwarded),
        reply_nat=int(reply_nat),
        check_sockets=int(check_sockets),
        affinity_ns=int(affinity_s * 1e9),
        affinity_key=AFFINITY_KEYS.index(affinity_key),
    )
