"""`load`, `run` and `unload`: attaching the dataplane and taking it away."""

from __future__ import annotations

from typing import Annotated

import typer

from ebpflb.bpf import defaults
from ebpflb.cli.common import (
    Affinity,
    AffinityKey,
    BalanceForwarded,
    DropWithoutGateway,
    Expiry,
    GatewayPorts,
    Interfaces,
    Mode,
    NoReplyNat,
    PinPath,
    RegPort,
    ServicePort,
    TraceOpt,
    UsageError,
    app,
    checked_config,
    out,
    run,
    termination_as_interrupt,
)
from ebpflb.cli.foreground import run_foreground
from ebpflb.cli.run_lock import refuse_if_owned, remove_stale_lock
from ebpflb.dataplane import Instance, default_pin_path
from ebpflb.dataplane.host import require_bpffs, require_lasting_bpffs
from ebpflb.errors import EbpflbError

DEFAULT_GATEWAY_PORTS = "{}-{}".format(*defaults.GATEWAY_PORTS)


def refuse_if_unreachable_or_owned(pin_path: str, interfaces: list[str]) -> None:
    """Before `load` or `run` attaches: pins that would vanish with this command (ip netns
    exec), or a live `run` that owns the pin path or one of the interfaces."""
    require_lasting_bpffs(pin_path)
    refuse_if_owned(pin_path, interfaces)


@app.command()
def load(
    interfaces: Interfaces,
    trace: TraceOpt = False,
    expiry: Expiry = defaults.EXPIRY_S,
    port: ServicePort = defaults.SERVICE_PORT,
    reg_port: RegPort = defaults.REG_PORT,
    mode: Mode = "auto",
    drop_without_gateway: DropWithoutGateway = False,
    gateway_ports: GatewayPorts = DEFAULT_GATEWAY_PORTS,
    balance_forwarded: BalanceForwarded = False,
    no_reply_nat: NoReplyNat = False,
    affinity: Affinity = 0.0,
    affinity_key: AffinityKey = "client",
    userspace: Annotated[  # hidden: accepted only to say that `run -u` is meant
        bool, typer.Option("-u", "--userspace-registrations", hidden=True)
    ] = False,
    pin_path: PinPath = None,
) -> None:
    """Attach the load balancer to IFACE... and return; state is pinned under --pin-path."""
    pin_path = pin_path or default_pin_path()
    if userspace:  # user-space registrations need a process to receive them
        raise UsageError("-u needs a process to receive registrations: use `ebpflb run -u IFACE...` instead")
    config = checked_config(
        mode,
        port,
        reg_port,
        expiry,
        trace,
        False,
        drop_without_gateway,
        gateway_ports,
        balance_forwarded,
        no_reply_nat,
        affinity,
        affinity_key,
    )

    def act() -> None:
        refuse_if_unreachable_or_owned(pin_path, interfaces)
        instance = Instance(pin_path)
        try:
            with termination_as_interrupt():  # so that load detaches what it attached
                attached = instance.load(interfaces, config, mode)
        except KeyboardInterrupt:
            if instance.attachments():  # it came after the load had finished
                loaded = f"interrupted, but ebpflb was loaded at {pin_path}: `ebpflb unload` removes it"
                raise EbpflbError(loaded) from None
            raise
        where = ", ".join(f"{a.ifname} ({a.mode})" for a in attached)
        out.print(f"ebpflb loaded on {where}; service port {port}, registrations on {reg_port}, pins in {pin_path}")

    run(act)


@app.command("run")
def run_cmd(
    interfaces: Interfaces,
    trace: TraceOpt = False,
    expiry: Expiry = defaults.EXPIRY_S,
    userspace: Annotated[
        bool, typer.Option("-u", "--userspace-registrations", help="Receive registrations in this process.")
    ] = False,
    port: ServicePort = defaults.SERVICE_PORT,
    reg_port: RegPort = defaults.REG_PORT,
    mode: Mode = "auto",
    drop_without_gateway: DropWithoutGateway = False,
    gateway_ports: GatewayPorts = DEFAULT_GATEWAY_PORTS,
    balance_forwarded: BalanceForwarded = False,
    no_reply_nat: NoReplyNat = False,
    affinity: Affinity = 0.0,
    affinity_key: AffinityKey = "client",
    pin_path: PinPath = None,
) -> None:
    """Attach like `load`, show live status, and detach and remove the pins on Ctrl-C or SIGTERM."""
    pin_path = pin_path or default_pin_path()
    config = checked_config(
        mode,
        port,
        reg_port,
        expiry,
        trace,
        userspace,
        drop_without_gateway,
        gateway_ports,
        balance_forwarded,
        no_reply_nat,
        affinity,
        affinity_key,
    )

    def act() -> None:
        refuse_if_unreachable_or_owned(pin_path, interfaces)
        run_foreground(pin_path, interfaces, config, mode, out)

    run(act)


@app.command()
def unload(pin_path: PinPath = None) -> None:
    """Detach everything the instance attached and remove its pins."""
    pin_path = pin_path or default_pin_path()

    def act() -> None:
        refuse_if_owned(pin_path)
        require_bpffs(pin_path)
        detached = Instance(pin_path).unload()  # checks the namespace itself, and removes pins of any version
        remove_stale_lock(pin_path)  # left by a `run` killed with kill -9
        where = ", ".join(a.ifname for a in detached) or "no interface"
        out.print(f"ebpflb unloaded from {where}; removed {pin_path}")

    run(act)
