"""The ebpflb command line: one sub-app per resource. Library errors become one red line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from types import FrameType
from typing import Annotated, Callable, Iterator, List, Optional, TypeVar

import typer

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError  # type: ignore[no-redef]
from rich.console import Console
from rich.table import Table

from .errors import EbpflbError
from .instance import DEFAULT_PIN_PATH, GatewayInfo, Instance, Snapshot, config_for, default_pin_path
from .layout import MAX_WEIGHT, CtlOp, RejectReason
from .object_file import object_path
from .run import refuse_if_owned, remove_stale_lock, run_foreground
from .system import require_bpffs, require_lasting_bpffs
from .trace import TraceEvent, follow, trace_pipe, tracing_is_on

app = typer.Typer(
    help="Kernel-fast UDP load balancer for local listeners (XDP, smooth weighted round-robin).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
gateways_app = typer.Typer(help="List gateways, or add one by hand.", invoke_without_command=True)
weights_app = typer.Typer(help="Change gateway weights.", no_args_is_help=True)
app.add_typer(gateways_app, name="gateways")
app.add_typer(weights_app, name="weights")

out = Console()
err = Console(stderr=True)

PinPath = Annotated[
    Optional[str],
    typer.Option(
        "--pin-path",
        help=f"bpffs directory of the instance [default: {DEFAULT_PIN_PATH} in the initial network namespace, "
        f"{DEFAULT_PIN_PATH}-net<inode> in any other].",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
T = TypeVar("T")

# Options `load` and `run` share.
Interfaces = Annotated[List[str], typer.Argument(help="Interfaces to balance on; lo is always added.")]
TraceOpt = Annotated[bool, typer.Option("-t", "--trace", help="Log registrations and removals to the trace pipe.")]
Expiry = Annotated[float, typer.Option("-e", "--expiry", help="Seconds without a heartbeat before a gateway expires.")]
ServicePort = Annotated[int, typer.Option("--port", help="Service port to balance.")]
RegPort = Annotated[int, typer.Option("--reg-port", help="Port gateways register on.")]
Mode = Annotated[str, typer.Option("--mode", help="XDP mode: auto (native, else generic), native or skb.")]
BalanceForwarded = Annotated[
    bool,
    typer.Option(
        "--balance-forwarded", help="Also balance service datagrams this host forwards (default: only its own)."
    ),
]
GatewayPorts = Annotated[
    str,
    typer.Option(
        "--gateway-ports", metavar="LO-HI", help="Only these ports may register as gateways (see the threat model)."
    ),
]
DropWithoutGateway = Annotated[
    bool, typer.Option("--drop-without-gateway", help="Drop service datagrams while no gateway is live.")
]


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the block, like Ctrl-C, so clean-up runs."""

    def interrupt(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(action: Callable[[], T]) -> T:
    """Turns an EbpflbError (or a stray OSError) into one line on stderr and exit code 1: the
    command line was right but the command could not be done. A wrong command line raises
    UsageError instead, which `invoke` turns into exit code 2."""
    try:
        return action()
    except EbpflbError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    except OSError as e:
        err.print(f"[red]error:[/red] {e.strerror or e}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def port_arg(value: int) -> int:
    if not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a UDP port (1-65535)")
    return value


def weight_arg(value: int) -> int:
    if not 0 <= value <= MAX_WEIGHT:
        raise typer.BadParameter(f"{value} is out of range (0-{MAX_WEIGHT})")
    return value


def parse_port_range(text: str) -> tuple[int, int]:
    """`LO-HI` (or one port) -> (LO, HI); an EbpflbError names the option otherwise."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not match:
        raise EbpflbError(f"--gateway-ports {text!r} is not a port range: write LO-HI, e.g. 1024-65535")
    low = int(match.group(1))
    return low, int(match.group(2) or low)


def check_options(mode: str, port: int, reg_port: int, expiry: float, gateway_ports: str) -> None:
    """Values `load` and `run` cannot take are usage errors (exit 2), found before anything is touched."""
    if mode not in ("auto", "native", "skb"):
        raise UsageError(f"--mode must be auto, native or skb, not {mode!r}")
    try:
        # its checks are all of the command line
        config_for(port, reg_port, expiry, False, False, False, parse_port_range(gateway_ports))
    except EbpflbError as e:
        raise UsageError(str(e)) from None


def instance_at(pin_path: str) -> Instance:
    """The instance at pin_path; without bpffs there, the error names the missing mount rather
    than saying that nothing is loaded."""
    require_bpffs(pin_path)
    instance = Instance(pin_path)
    instance.check_netns()
    return instance


@app.command()
def load(
    interfaces: Interfaces,
    trace: TraceOpt = False,
    expiry: Expiry = 30.0,
    port: ServicePort = 2152,
    reg_port: RegPort = 3000,
    mode: Mode = "auto",
    drop_without_gateway: DropWithoutGateway = False,
    gateway_ports: GatewayPorts = "1024-65535",
    balance_forwarded: BalanceForwarded = False,
    userspace: Annotated[  # hidden: accepted only to say that `run -u` is meant
        bool, typer.Option("-u", "--userspace-registrations", hidden=True)
    ] = False,
    pin_path: PinPath = None,
) -> None:
    """Attach the load balancer to IFACE... and return; state is pinned under --pin-path."""
    pin_path = pin_path or default_pin_path()
    if userspace:  # user-space registrations need a process to receive them
        raise UsageError("-u needs a process to receive registrations: use `ebpflb run -u IFACE...` instead")
    check_options(mode, port, reg_port, expiry, gateway_ports)

    def act() -> None:
        ports = parse_port_range(gateway_ports)
        config = config_for(port, reg_port, expiry, trace, False, drop_without_gateway, ports, balance_forwarded)
        require_lasting_bpffs(pin_path)  # not pins that vanish with this command (ip netns exec)
        refuse_if_owned(pin_path, interfaces)
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
    expiry: Expiry = 30.0,
    userspace: Annotated[
        bool, typer.Option("-u", "--userspace-registrations", help="Receive registrations in this process.")
    ] = False,
    port: ServicePort = 2152,
    reg_port: RegPort = 3000,
    mode: Mode = "auto",
    drop_without_gateway: DropWithoutGateway = False,
    gateway_ports: GatewayPorts = "1024-65535",
    balance_forwarded: BalanceForwarded = False,
    pin_path: PinPath = None,
) -> None:
    """Attach like `load`, show live status, and detach and remove the pins on Ctrl-C or SIGTERM."""
    pin_path = pin_path or default_pin_path()
    check_options(mode, port, reg_port, expiry, gateway_ports)

    def act() -> None:
        ports = parse_port_range(gateway_ports)
        config = config_for(port, reg_port, expiry, trace, userspace, drop_without_gateway, ports, balance_forwarded)
        require_lasting_bpffs(pin_path)  # not pins that vanish with this command (ip netns exec)
        refuse_if_owned(pin_path, interfaces)
        run_foreground(pin_path, interfaces, config, mode, out)

    run(act)


@app.command()
def unload(pin_path: PinPath = None) -> None:
    """Detach everything the instance attached and remove its pins."""
    pin_path = pin_path or default_pin_path()

    def act() -> None:
        refuse_if_owned(pin_path)
        detached = instance_at(pin_path).unload()
        remove_stale_lock(pin_path)  # left by a `run` killed with kill -9
        where = ", ".join(a.ifname for a in detached) or "no interface"
        out.print(f"ebpflb unloaded from {where}; removed {pin_path}")

    run(act)


def status_dict(instance: Instance, snap: Snapshot) -> dict:
    c, cfg = snap.counters, snap.state.config
    return {
        "pin_path": instance.pin_path,
        "interfaces": [{"name": a.ifname, "mode": a.mode} for a in instance.attachments()],
        "config": {
            "service_port": cfg.service_port,
            "reg_port": cfg.reg_port,
            "expiry_s": cfg.expiry_ns / 1e9,
            "trace": bool(cfg.trace),
            "userspace_registrations": bool(cfg.userspace_reg),
            "drop_without_gateway": bool(cfg.drop_without_gateway),
            "gateway_ports": [cfg.gw_port_min, cfg.gw_port_max],
            "balance_forwarded": bool(cfg.balance_forwarded),
        },
        "gateways": len(snap.gateways),
        "counters": {
            "service": c.service,
            "no_gateway_passed": c.no_gateway_passed,
            "no_gateway_dropped": c.no_gateway_dropped,
            "unbalanced": c.unbalanced,
            "registrations_accepted": c.reg_accepted,
            "registrations_rejected": {r.name.lower(): c.reg_rejected[r] for r in RejectReason},
            "expired": c.expired,
            "schedule_rebuilds": c.rebuilds,
            "stale_picks": c.stale_picks,
            "forwarded": c.forwarded,
            "registrations_in_kernel": c.reg_in_kernel,
        },
    }


@app.command()
def status(as_json: AsJson = False, pin_path: PinPath = None) -> None:
    """Interfaces, mode, configuration and global counters."""
    pin_path = pin_path or default_pin_path()

    def act() -> None:
        instance = instance_at(pin_path)
        info = status_dict(instance, instance.snapshot())
        if as_json:
            print(json.dumps(info, indent=2))
            return
        where = ", ".join(f"{i['name']} ({i['mode']})" for i in info["interfaces"]) or "[yellow]not attached[/yellow]"
        cfg = info["config"]
        out.print(f"[bold]ebpflb[/bold] at {pin_path}: {where}")
        out.print(
            f"service port {cfg['service_port']}, registration port {cfg['reg_port']}, "
            f"expiry {cfg['expiry_s']:g} s, trace {'on' if cfg['trace'] else 'off'}, "
            f"registrations in {'user space' if cfg['userspace_registrations'] else 'kernel'}, "
            f"without gateway: {'drop' if cfg['drop_without_gateway'] else 'pass'}, "
            f"gateway ports {cfg['gateway_ports'][0]}-{cfg['gateway_ports'][1]}, "
            f"forwarded datagrams: {'balanced' if cfg['balance_forwarded'] else 'passed'}"
        )
        table = Table("counter", "value", box=None)
        counters = info["counters"]
        for key, value in counters.items():
            if isinstance(value, dict):
                for reason, n in value.items():
                    table.add_row(f"{key}.{reason}", str(n))
            else:
                table.add_row(key, str(value))
        out.print(f"{info['gateways']} gateway(s)")
        out.print(table)

    run(act)


def gateway_rows(snap: Snapshot) -> list[dict]:
    total_weight = sum(g.weight for g in snap.gateways) or 1
    total_packets = sum(g.packets for g in snap.gateways) or 1
    return [
        {
            "port": g.port,
            "weight": g.weight,
            "weight_share": g.weight / total_weight,
            "packets": g.packets,
            "packet_share": g.packets / total_packets,
            "bytes": g.bytes,
            "age_s": None if g.is_static else round(g.age_s, 3),  # a static gateway never expires
            "static": g.is_static,
            "slot": g.slot,
        }
        for g in sorted(snap.gateways, key=lambda g: g.port)
    ]


@gateways_app.callback()
def gateways(ctx: typer.Context, as_json: AsJson = False, pin_path: PinPath = None) -> None:
    """One row per gateway: port, weight, shares, packets, bytes, seconds since registration."""
    if ctx.invoked_subcommand:
        return
    pin_path = pin_path or default_pin_path()

    def act() -> None:
        rows = gateway_rows(instance_at(pin_path).snapshot())
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("port", "weight", "weight %", "packets", "packet %", "bytes", "age s", "static")
        for r in rows:
            table.add_row(
                str(r["port"]),
                str(r["weight"]),
                f"{100 * r['weight_share']:.1f}",
                str(r["packets"]),
                f"{100 * r['packet_share']:.1f}",
                str(r["bytes"]),
                "-" if r["age_s"] is None else f"{r['age_s']:.1f}",
                "yes" if r["static"] else "",
            )
        out.print(table if rows else "no gateways registered")

    run(act)


# Negative numbers must reach the range checks, not be taken for unknown options.
NUMBERS_MAY_BE_NEGATIVE = {"ignore_unknown_options": True}


@gateways_app.command("add", context_settings=NUMBERS_MAY_BE_NEGATIVE)
def gateways_add(
    port: Annotated[int, typer.Argument(help="UDP port of the gateway.", callback=port_arg)],
    weight: Annotated[int, typer.Option("--weight", "-w", help="Weight, 1-65535.", callback=weight_arg)] = 1,
    pin_path: PinPath = None,
) -> None:
    """Add a gateway by hand. It never expires; `weights set PORT 0` removes it."""
    pin_path = pin_path or default_pin_path()
    if weight == 0:
        raise UsageError("a new gateway needs a weight of at least 1 (`weights set PORT 0` removes one)")

    def act() -> Optional[GatewayInfo]:
        instance = instance_at(pin_path)
        old = next((g for g in instance.snapshot().gateways if g.port == port), None)
        instance.control(CtlOp.ADD_STATIC, port, weight)
        return old

    old = run(act)
    if old:
        out.print(f"gateway {port} updated: weight {old.weight} -> {weight} (static: it does not expire)")
    else:
        out.print(f"gateway {port} added with weight {weight} (static: it does not expire)")


@weights_app.command("set", context_settings=NUMBERS_MAY_BE_NEGATIVE)
def weights_set(
    port: Annotated[int, typer.Argument(help="UDP port of the gateway.", callback=port_arg)],
    weight: Annotated[int, typer.Argument(help="New weight; 0 removes the gateway.", callback=weight_arg)],
    pin_path: PinPath = None,
) -> None:
    """Change a gateway's weight (0 removes it)."""
    pin_path = pin_path or default_pin_path()
    run(lambda: instance_at(pin_path).control(CtlOp.SET_WEIGHT, port, weight))
    out.print(f"gateway {port} removed" if weight == 0 else f"gateway {port} weight set to {weight}")


@app.command("object-path")
def object_path_cmd() -> None:
    """Print the path of the shipped XDP object (for xdp-loader)."""
    print(object_path())


@app.command("trace")
def trace_cmd(
    count: Annotated[Optional[int], typer.Option("--count", "-n", help="Stop after N events.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Stop after S seconds.")] = None,
    ports: Annotated[
        Optional[List[int]], typer.Option("--port", "-p", help="Only this gateway port (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    pin_path: PinPath = None,
) -> None:
    """Follow the kernel trace pipe and show ebpflb's events (load or run with -t).

    Reading the trace pipe consumes it: run one reader at a time."""
    pin_path = pin_path or default_pin_path()

    def hint() -> None:
        instance = Instance(pin_path)
        try:
            traced = bool(instance.snapshot().state.config.trace)
        except EbpflbError:
            err.print(f"[yellow]no events yet, and nothing is loaded at {pin_path}[/yellow]", highlight=False)
            return
        if not traced:
            err.print(
                f"[yellow]no events yet: the instance at {pin_path} was loaded without -t; "
                "load it again with `ebpflb load -t ...` (or `ebpflb run -t ...`) to trace[/yellow]",
                highlight=False,
            )

    def show(event: TraceEvent) -> None:
        if as_json:
            print(json.dumps(event.as_dict()), flush=True)
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(event.wall)) + f".{int(event.wall * 1000) % 1000:03d}"
        detail = f"slot {event.slot}" if event.slot is not None else event.reason_text
        style = TRACE_STYLES.get(event.event, "")
        out.print(
            f"{stamp}  [{style}]{event.event:<7}[/]  {event.port if event.port is not None else '-':<6} "
            f"{event.weight if event.weight is not None else '-':<6} {detail}",
            highlight=False,
            soft_wrap=True,
        )

    def act() -> None:
        pipe = trace_pipe(lambda text: err.print(text, highlight=False))
        if not tracing_is_on(pipe):
            on = os.path.join(os.path.dirname(pipe), "tracing_on")
            err.print(f"[yellow]tracing is off: `echo 1 > {on}`[/yellow]", highlight=False)
        err.print(f"following {pipe} (ebpflb events only; Ctrl-C stops)", highlight=False)
        if not as_json:
            out.print(f"[bold]{'time':<12}  {'event':<7}  {'port':<6} {'weight':<6} detail[/bold]")
        try:
            follow(pipe, show, hint, count=count, timeout=timeout, ports=set(ports or ()))
        except KeyboardInterrupt:
            pass

    run(act)


TRACE_STYLES = {"add": "green", "weight": "cyan", "remove": "yellow", "expire": "magenta", "reject": "red"}


def invoke(application: typer.Typer, argv: list[str], prog_name: str) -> None:
    """Runs the CLI; a usage error is one line naming the problem and --help, exit 2."""
    try:
        code = application(args=argv, prog_name=prog_name, standalone_mode=False)
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # no command given: the help is the whole answer
            if text := e.format_message():  # rich has printed it already; plain click has not
                print(text)
        else:
            err.print(
                f"[red]error:[/red] {e.format_message()} (see `{prog_name} --help`)", highlight=False, soft_wrap=True
            )
        sys.exit(2)
    except typer.Abort:
        err.print("[red]error:[/red] aborted", highlight=False)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def main(argv: Optional[list[str]] = None) -> None:
    invoke(app, argv if argv is not None else sys.argv[1:], "ebpflb")


def udp_wrr_main() -> None:
    """`ebpflb_udp_wrr [-t] [-e SECONDS] [-u] IFACE...`: the original tool's command line, which is `ebpflb run`."""
    alias = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    alias.command(help=run_cmd.__doc__)(run_cmd)  # its only command: the options go straight to `run`
    invoke(alias, sys.argv[1:], "ebpflb_udp_wrr")
