"""What every command shares: the apps, the consoles, option types, the error wrapper
(runtime errors exit 1, usage errors 2) and checks of the command line."""

from __future__ import annotations

import contextlib
import re
import signal
from types import FrameType
from typing import Annotated, Callable, Iterator, List, Optional, TypeVar

import typer

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:
    from click.exceptions import UsageError  # type: ignore[no-redef]
from rich.console import Console

from ebpflb.bpf.layout import MAX_WEIGHT, LbConfig
from ebpflb.dataplane import DEFAULT_PIN_PATH, Instance, config_for
from ebpflb.dataplane.host import require_bpffs
from ebpflb.errors import EbpflbError

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
Interfaces = Annotated[
    Optional[List[str]],
    typer.Argument(help="Interfaces to balance on; lo is always added. Default: `interfaces` of --config."),
]
ConfigPath = Annotated[
    Optional[str],
    typer.Option("--config", metavar="FILE", help="TOML file of these options (see contrib/ebpflb.toml)."),
]
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
Affinity = Annotated[
    float,
    typer.Option(
        "--affinity", metavar="SECONDS", help="Keep a flow on its gateway while seen this recently (0: per datagram)."
    ),
]
AffinityKey = Annotated[
    str,
    typer.Option("--affinity-key", metavar="client|gtpu", help="Flow of --affinity: client address and port, or TEID."),
]
NoReplyNat = Annotated[
    bool,
    typer.Option(
        "--no-reply-nat", help="Leave replies from gateways' ports as they are (default: source port = service port)."
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


def checked_config(
    mode: str,
    port: int,
    reg_port: int,
    expiry: float,
    trace: bool,
    userspace: bool,
    drop_without_gateway: bool,
    gateway_ports: str,
    balance_forwarded: bool,
    no_reply_nat: bool,
    affinity: float,
    affinity_key: str,
) -> LbConfig:
    """The configuration `load` and `run` are asked for. Values they cannot take are usage
    errors (exit 2), found before anything is touched."""
    if mode not in ("auto", "native", "skb"):
        raise UsageError(f"--mode must be auto, native or skb, not {mode!r}")
    try:  # its checks are all of the command line
        ports = parse_port_range(gateway_ports)
        return config_for(
            port,
            reg_port,
            expiry,
            trace,
            userspace,
            drop_without_gateway,
            ports,
            balance_forwarded,
            reply_nat=not no_reply_nat,
            affinity_s=affinity,
            affinity_key=affinity_key,
        )
    except EbpflbError as e:
        raise UsageError(str(e)) from None


def instance_at(pin_path: str) -> Instance:
    """The instance at pin_path; without bpffs there, the error names the missing mount rather
    than saying that nothing is loaded."""
    require_bpffs(pin_path)
    instance = Instance(pin_path)
    instance.check_netns()
    return instance
