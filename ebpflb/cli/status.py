"""`status` and `object-path`: what is loaded, with which configuration and counters."""

from __future__ import annotations

import json

from rich.table import Table

from ebpflb.bpf.layout import FLOW_TABLE_SIZE, RejectReason
from ebpflb.bpf.object_file import object_path
from ebpflb.cli.common import (
    AsJson,
    PinPath,
    app,
    instance_at,
    out,
    run,
)
from ebpflb.dataplane import Instance, Snapshot, default_pin_path
from ebpflb.dataplane.config import AFFINITY_KEYS


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
            "reply_nat": bool(cfg.reply_nat),
            "socket_liveness": bool(cfg.check_sockets),
            "affinity_s": cfg.affinity_ns / 1e9,
            "affinity_key": AFFINITY_KEYS[cfg.affinity_key] if cfg.affinity_key < len(AFFINITY_KEYS) else "?",
            "flow_table_size": FLOW_TABLE_SIZE,
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
            "replies_nat": c.replies_nat,
            "gateways_found_dead": c.found_dead,
            "flows_created": c.flows_created,
            "flows_expired": c.flows_expired,
            "flows_moved": c.flows_moved,
            # an LRU table: each flow created beyond its size took the place of the least recent
            "flow_table_full": max(0, c.flows_created - FLOW_TABLE_SIZE),
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
            f"forwarded datagrams: {'balanced' if cfg['balance_forwarded'] else 'passed'}, "
            f"reply NAT {'on' if cfg['reply_nat'] else 'off'}, "
            + (f"affinity {cfg['affinity_s']:g} s by {cfg['affinity_key']}" if cfg["affinity_s"] else "affinity off")
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


@app.command("object-path")
def object_path_cmd() -> None:
    """Print the path of the shipped XDP object (for xdp-loader)."""
    print(object_path())
