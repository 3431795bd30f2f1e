"""`top`: live rates of a loaded instance, like `ipvsadm --rate` and `top`: per gateway its
weight and share, datagrams and bytes per second over the last interval, up or down and age;
totals and rejections per second. A rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ebpflb.bpf.layout import RejectReason
from ebpflb.cli.common import PinPath, app, instance_at, out, run, termination_as_interrupt
from ebpflb.dataplane import Instance, Snapshot, default_pin_path


@dataclass
class GatewayRate:
    port: int
    weight: int
    weight_share: float  # of the weights of the gateways that are up
    packets: int  # in the interval
    packets_per_s: float
    bytes_per_s: float
    packet_share: float  # of the datagrams balanced in the interval
    up: bool
    age_s: Optional[float]  # None: static, never expires


@dataclass
class Rates:
    """What changed between two snapshots, per second."""

    interval_s: float
    gateways: list[GatewayRate]
    service: float
    unbalanced: float
    accepted: float
    rejected: dict[str, float]  # by reason, only those that moved
    expired: float
    found_dead: float


def rates(before: Snapshot, now: Snapshot, interval_s: float) -> Rates:
    """Per-second differences; a gateway new in the interval (or on a reused slot) counts from 0."""
    seconds = max(interval_s, 1e-6)
    old = {(g.slot, g.port): g for g in before.gateways}
    up_weight = sum(g.weight for g in now.gateways if g.up) or 1
    deltas = []
    for g in sorted(now.gateways, key=lambda g: g.port):
        prev = old.get((g.slot, g.port))
        packets = g.packets - prev.packets if prev and g.packets >= prev.packets else g.packets
        octets = g.bytes - prev.bytes if prev and g.bytes >= prev.bytes else g.bytes
        deltas.append((g, packets, octets))
    interval_packets = sum(p for _, p, _ in deltas) or 1
    b, n = before.counters, now.counters

    def per_s(field: str) -> float:
        return max(0, getattr(n, field) - getattr(b, field)) / seconds

    rejected = {
        r.name.lower(): (n.reg_rejected[r] - b.reg_rejected[r]) / seconds
        for r in RejectReason
        if n.reg_rejected[r] > b.reg_rejected[r]
    }
    return Rates(
        interval_s=interval_s,
        gateways=[
            GatewayRate(
                port=g.port,
                weight=g.weight,
                weight_share=g.weight / up_weight if g.up else 0.0,
                packets=packets,
                packets_per_s=packets / seconds,
                bytes_per_s=octets / seconds,
                packet_share=packets / interval_packets,
                up=g.up,
                age_s=None if g.is_static else g.age_s,
            )
            for g, packets, octets in deltas
        ],
        service=per_s("service"),
        unbalanced=sum(per_s(f) for f in ("no_gateway_passed", "no_gateway_dropped", "forwarded", "unbalanced")),
        accepted=per_s("reg_accepted"),
        rejected=rejected,
        expired=per_s("expired"),
        found_dead=per_s("found_dead"),
    )


def _age(g: GatewayRate) -> str:
    return "static" if g.age_s is None else f"{g.age_s:.1f}"


def _totals(r: Rates) -> str:
    rejected = ", ".join(f"{k} {v:.0f}/s" for k, v in r.rejected.items()) or "none"
    return (
        f"balanced {r.service:.0f}/s, unbalanced {r.unbalanced:.0f}/s; registrations {r.accepted:.1f}/s, "
        f"rejected: {rejected}; expired {r.expired:.1f}/s, found dead {r.found_dead:.1f}/s"
    )


def plain_lines(r: Rates) -> list[str]:
    """One line of totals, then one per gateway: for logs and pipes."""
    stamp = time.strftime("%H:%M:%S")
    lines = [f"{stamp} {len(r.gateways)} gateway(s) over {r.interval_s:.2f} s; {_totals(r)}"]
    for g in r.gateways:
        lines.append(
            f"{stamp}   port {g.port} weight {g.weight} ({100 * g.weight_share:.1f}%) +{g.packets} pkt "
            f"{g.packets_per_s:.0f} pkt/s ({100 * g.packet_share:.1f}%) {g.bytes_per_s:.0f} B/s "
            f"{'up' if g.up else 'DOWN'} age {_age(g)}"
        )
    return lines


def live_table(r: Rates, pin_path: str) -> Group:
    table = Table("port", "weight", "weight %", "pkt/s", "packet %", "bytes/s", "up", "age s", box=None)
    for g in r.gateways:
        table.add_row(
            str(g.port),
            str(g.weight),
            f"{100 * g.weight_share:.1f}",
            f"{g.packets_per_s:.0f}",
            f"{100 * g.packet_share:.1f}",
            f"{g.bytes_per_s:.0f}",
            "yes" if g.up else "[red]no[/red]",
            _age(g),
        )
    head = Text.from_markup(f"[bold]ebpflb top[/bold] · {pin_path} · every {r.interval_s:g} s · Ctrl-C exits")
    body = table if r.gateways else Text("no gateways registered", style="yellow")
    return Group(head, body, Text(_totals(r)))


@app.command()
def top(
    interval: Annotated[float, typer.Option("--interval", "-i", help="Seconds between updates.")] = 1.0,
    iterations: Annotated[
        int, typer.Option("--iterations", "-n", help="Stop after this many updates (0: until Ctrl-C).")
    ] = 0,
    pin_path: PinPath = None,
) -> None:
    """Live rates of a loaded instance: per gateway and in total, every --interval seconds."""
    if not 0.1 <= interval <= 3600:
        raise typer.BadParameter(f"{interval:g} is out of range (0.1-3600 seconds)", param_hint="--interval")
    if iterations < 0:
        raise typer.BadParameter(f"{iterations} is negative", param_hint="--iterations")
    pin_path = pin_path or default_pin_path()
    run(lambda: _watch(instance_at(pin_path), interval, iterations))


def _watch(instance: Instance, interval: float, iterations: int) -> None:
    live = Live(console=out, auto_refresh=False) if out.is_terminal else None
    before, taken = instance.snapshot(), time.monotonic()
    if not live:  # says when the first interval starts
        out.print(
            f"ebpflb top: {instance.pin_path} every {interval:g} s; Ctrl-C exits", highlight=False, markup=False
        )
    shown = 0
    try:
        with termination_as_interrupt():
            if live:
                live.start()
            while not iterations or shown < iterations:
                time.sleep(max(0.0, taken + interval - time.monotonic()))
                now, at = instance.snapshot(), time.monotonic()
                r = rates(before, now, at - taken)
                if live:
                    live.update(live_table(r, instance.pin_path), refresh=True)
                else:
                    for line in plain_lines(r):
                        out.print(line, highlight=False, soft_wrap=True, markup=False)
                before, taken, shown = now, at, shown + 1
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: the way out
    finally:
        if live:
            live.stop()
