"""`gateways`, `gateways add` and `weights set`: the gateway table."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from ebpflb.bpf.layout import CtlOp
from ebpflb.cli.common import (
    AsJson,
    PinPath,
    UsageError,
    gateways_app,
    instance_at,
    out,
    port_arg,
    run,
    weight_arg,
    weights_app,
)
from ebpflb.dataplane import GatewayInfo, Snapshot, default_pin_path


def gateway_rows(snap: Snapshot) -> list[dict]:
    total_weight = sum(g.weight for g in snap.gateways if g.up) or 1  # a down gateway gets no share
    total_packets = sum(g.packets for g in snap.gateways) or 1
    return [
        {
            "port": g.port,
            "weight": g.weight,
            "weight_share": g.weight / total_weight if g.up else 0.0,
            "packets": g.packets,
            "packet_share": g.packets / total_packets,
            "bytes": g.bytes,
            "age_s": None if g.is_static else round(g.age_s, 3),  # a static gateway never expires
            "static": g.is_static,
            "up": g.up,
            "slot": g.slot,
        }
        for g in sorted(snap.gateways, key=lambda g: g.port)
    ]


@gateways_app.callback()
def gateways(ctx: typer.Context, as_json: AsJson = False, pin_path: PinPath = None) -> None:
    """One row per gateway: port, weight, shares, packets, bytes, seconds since registration, up."""
    if ctx.invoked_subcommand:
        return
    pin_path = pin_path or default_pin_path()

    def act() -> None:
        rows = gateway_rows(instance_at(pin_path).snapshot())
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("port", "weight", "weight %", "packets", "packet %", "bytes", "age s", "static", "up")
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
                "yes" if r["up"] else "[red]no[/red]",
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
