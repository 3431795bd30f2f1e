"""`load`, `run` and `unload`: attaching the dataplane and taking it away."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

from ebpflb.bpf import defaults
from ebpflb.bpf.layout import CtlOp, LbConfig
from ebpflb.cli.common import (
    Affinity,
    AffinityKey,
    BalanceForwarded,
    ConfigPath,
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
from ebpflb.cli.config_file import ConfigFileError, read_config
from ebpflb.cli.foreground import ForegroundExtras, run_foreground
from ebpflb.cli.run_lock import refuse_if_owned, remove_stale_lock
from ebpflb.dataplane import Instance, default_pin_path
from ebpflb.dataplane.host import require_bpffs, require_lasting_bpffs
from ebpflb.errors import EbpflbError
from ebpflb.metrics.exporter import parse_listen

DEFAULT_GATEWAY_PORTS = "{}-{}".format(*defaults.GATEWAY_PORTS)


def refuse_if_unreachable_or_owned(pin_path: str, interfaces: list[str]) -> None:
    """Before `load` or `run` attaches: pins that would vanish with this command (ip netns
    exec), or a live `run` that owns the pin path or one of the interfaces."""
    require_lasting_bpffs(pin_path)
    refuse_if_owned(pin_path, interfaces)


# checked_config's parameters: the options that make the program's configuration
CONFIG_OPTIONS = (
    "mode",
    "port",
    "reg_port",
    "expiry",
    "trace",
    "userspace",
    "drop_without_gateway",
    "gateway_ports",
    "balance_forwarded",
    "no_reply_nat",
    "affinity",
    "affinity_key",
)


@dataclass
class StartOptions:
    """What `load` or `run` was asked for: the command line over the --config file over the defaults."""

    interfaces: list[str]
    config: LbConfig
    mode: str
    pin_path: str
    gateways: list[tuple[int, int]]  # static (port, weight) from the file's [[gateway]] tables
    options: dict[str, Any]  # every option by parameter name, after merging


def start_options(ctx: typer.Context, config_path: Optional[str], given: dict[str, Any]) -> StartOptions:
    """Merges the file into the options not given on the command line, and checks it all
    before anything is touched: a problem is a usage error (exit 2)."""
    options = dict(given)
    gateways: list[tuple[int, int]] = []
    if config_path:
        try:
            file = read_config(config_path)
        except ConfigFileError as e:
            raise UsageError(str(e)) from None
        for name, value in file.options.items():
            source = ctx.get_parameter_source(name)
            if name in options and (source is None or source.name == "DEFAULT"):
                options[name] = value
        gateways = file.gateways
    if not options["interfaces"]:
        raise UsageError("no interface to balance on: name IFACE..., or list `interfaces` in the --config file")
    config = checked_config(**{name: options[name] for name in CONFIG_OPTIONS})
    for port, _ in gateways:
        if port in (config.service_port, config.reg_port):
            raise UsageError(f"{config_path}: gateway port {port} is the service or the registration port")
    return StartOptions(
        options["interfaces"], config, options["mode"], options["pin_path"] or default_pin_path(), gateways, options
    )


def add_static_gateways(instance: Instance, gateways: list[tuple[int, int]]) -> None:
    """The file's [[gateway]] tables, added (or their weight set) once the program runs."""
    for port, weight in gateways:
        instance.control(CtlOp.ADD_STATIC, port, weight)


@app.command()
def load(
    ctx: typer.Context,
    interfaces: Interfaces = None,
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
    config_path: ConfigPath = None,
    pin_path: PinPath = None,
) -> None:
    """Attach the load balancer to IFACE... and return; state is pinned under --pin-path."""
    given = {k: v for k, v in locals().items() if k not in ("ctx", "config_path")}
    start = start_options(ctx, config_path, given)
    if start.options["userspace"]:  # user-space registrations need a process to receive them
        where = "-u" if userspace else f"{config_path}: userspace_registrations"
        raise UsageError(f"{where} needs a process to receive registrations: use `ebpflb run -u IFACE...` instead")
    pin_path = start.pin_path

    def act() -> None:
        refuse_if_unreachable_or_owned(pin_path, start.interfaces)
        instance = Instance(pin_path)
        # Until the line saying it is loaded is out, a signal must not kill silently: load
        # detaches what it attached, and an interruption after the load says it is loaded.
        try:
            with termination_as_interrupt():
                attached = instance.load(start.interfaces, start.config, start.mode)
                add_static_gateways(instance, start.gateways)
                where = ", ".join(f"{a.ifname} ({a.mode})" for a in attached)
                statics = f", {len(start.gateways)} static gateway(s)" if start.gateways else ""
                out.print(
                    f"ebpflb loaded on {where}; service port {start.config.service_port}, registrations on "
                    f"{start.config.reg_port}{statics}, pins in {pin_path}",
                    soft_wrap=True,  # one line, also in a pipe: scripts read it
                )
                sys.stdout.flush()  # out before the default handlers are back
        except KeyboardInterrupt:
            if instance.attachments():  # it came after the load had finished
                loaded = f"interrupted, but ebpflb was loaded at {pin_path}: `ebpflb unload` removes it"
                raise EbpflbError(loaded) from None
            raise

    run(act)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    interfaces: Interfaces = None,
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
    metrics_listen: Annotated[
        Optional[str],
        typer.Option("--metrics-listen", metavar="HOST:PORT", help="Also serve Prometheus metrics at /metrics."),
    ] = None,
    keep_loaded: Annotated[
        bool,
        typer.Option(
            "--keep-loaded", help="On exit leave the dataplane running and pinned (the next run adopts it)."
        ),
    ] = False,
    config_path: ConfigPath = None,
    pin_path: PinPath = None,
) -> None:
    """Attach like `load`, show live status, and detach and remove the pins on Ctrl-C or SIGTERM."""
    given = {k: v for k, v in locals().items() if k not in ("ctx", "config_path")}
    start = start_options(ctx, config_path, given)
    listen = start.options["metrics_listen"]
    if listen:
        try:
            parse_listen(listen)
        except EbpflbError as e:
            raise UsageError(f"--metrics-listen: {e}") from None

    def act() -> None:
        refuse_if_unreachable_or_owned(start.pin_path, start.interfaces)
        run_foreground(
            start.pin_path,
            start.interfaces,
            start.config,
            start.mode,
            out,
            ForegroundExtras(start.gateways, listen, start.options["keep_loaded"]),
        )

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
