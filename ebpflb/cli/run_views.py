"""The two status views of `ebpflb run`: plain lines (piped, logs) and a live table (a terminal)."""

from __future__ import annotations

import time
from typing import Optional, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ebpflb.bpf.layout import RejectReason
from ebpflb.dataplane import Attachment, GatewayInfo, Snapshot

SUMMARY_EVERY_S = 5.0  # plain output: counters line at most this often, and only when they moved




def where_attached(attachments: list[Attachment]) -> str:
    return ", ".join(f"{a.ifname} ({a.mode})" for a in attachments) or "no interface"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}" if whole else "0.0"


def _rejected(snap: Snapshot) -> dict[str, int]:
    return {r.name.lower(): int(snap.counters.reg_rejected[r]) for r in RejectReason}


class View(Protocol):
    def update(self, snap: Snapshot, attachments: list[Attachment]) -> None: ...

    def close(self) -> None: ...


class PlainView:
    """Log lines for a pipe or a file: one per change, and a counters line every few seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.previous: Optional[Snapshot] = None
        self.previous_where = ""
        self.summary_due = 0.0
        self.summarised: tuple[int, ...] = ()

    def say(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, soft_wrap=True, markup=False)

    def update(self, snap: Snapshot, attachments: list[Attachment]) -> None:
        where = where_attached(attachments)
        if where != self.previous_where and self.previous is not None:
            self.say(f"attached to {where}")
        self.previous_where = where
        before = self.previous
        if before is not None:
            self._gateway_changes(before, snap)
            self._rejections(before, snap)
        self._summary(snap)
        self.previous = snap

    def _gateway_changes(self, before: Snapshot, now: Snapshot) -> None:
        old = {g.port: g for g in before.gateways}
        new = {g.port: g for g in now.gateways}
        for port, g in sorted(new.items()):
            if port not in old:
                kind = "static gateway" if g.is_static else "gateway"
                self.say(f"{kind} {port} registered with weight {g.weight} (slot {g.slot})")
            elif old[port].weight != g.weight:
                self.say(f"gateway {port} weight {old[port].weight} -> {g.weight}")
        gone = sorted((g for p, g in old.items() if p not in new), key=lambda g: -g.age_s)
        expired = now.counters.expired - before.counters.expired
        for i, g in enumerate(gone):  # expiry takes the stalest first
            self.say(f"gateway {g.port} {'expired' if i < expired else 'removed'}")

    def _rejections(self, before: Snapshot, now: Snapshot) -> None:
        old, new = _rejected(before), _rejected(now)
        for reason, count in new.items():
            if count > old[reason]:
                self.say(f"registrations rejected ({reason}): +{count - old[reason]}, {count} in all")

    def _summary(self, snap: Snapshot) -> None:
        c = snap.counters
        values = (len(snap.gateways), c.service, c.no_gateway_passed, c.no_gateway_dropped, c.reg_accepted, c.expired)
        if values == self.summarised or time.monotonic() < self.summary_due:
            return
        self.summarised = values
        self.summary_due = time.monotonic() + SUMMARY_EVERY_S
        shares = ", ".join(f"{g.port}: {g.packets}" for g in sorted(snap.gateways, key=lambda g: g.port))
        self.say(
            f"{len(snap.gateways)} gateway(s){' (' + shares + ')' if shares else ''}; "
            f"balanced {c.service}, without gateway {c.no_gateway_passed + c.no_gateway_dropped}, "
            f"registrations {c.reg_accepted} accepted / {sum(_rejected(snap).values())} rejected, "
            f"expired {c.expired}"
        )

    def close(self) -> None:
        pass


class LiveView:
    """A rich Live table for a terminal, redrawn every tick."""

    def __init__(self, console: Console, pin_path: str) -> None:
        self.pin_path = pin_path
        self.previous: Optional[Snapshot] = None
        self.previous_at = time.monotonic()
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.live.start()

    def update(self, snap: Snapshot, attachments: list[Attachment]) -> None:
        now = time.monotonic()
        elapsed = max(now - self.previous_at, 1e-3)
        before = {g.port: g.packets for g in self.previous.gateways} if self.previous else {}
        self.previous, self.previous_at = snap, now
        self.live.update(self._render(snap, attachments, before, elapsed), refresh=True)

    def _render(self, snap: Snapshot, attachments: list[Attachment], before: dict[int, int], elapsed: float) -> Group:
        cfg, c = snap.state.config, snap.counters
        head = Text.from_markup(
            f"[bold]ebpflb run[/bold] on {where_attached(attachments)} · service port {cfg.service_port} · "
            f"registrations on {cfg.reg_port} ({'user space' if cfg.userspace_reg else 'kernel'}) · "
            f"expiry {cfg.expiry_ns / 1e9:g} s · trace {'on' if cfg.trace else 'off'} · Ctrl-C stops"
        )
        table = Table("port", "weight", "weight %", "packets", "packet %", "pkt/s", "bytes", "age s", box=None)
        gateways: list[GatewayInfo] = sorted(snap.gateways, key=lambda g: g.port)
        total_weight = sum(g.weight for g in gateways)
        total_packets = sum(g.packets for g in gateways)
        for g in gateways:
            rate = (g.packets - before.get(g.port, g.packets)) / elapsed
            table.add_row(
                str(g.port),
                str(g.weight),
                _pct(g.weight, total_weight),
                str(g.packets),
                _pct(g.packets, total_packets),
                f"{rate:.0f}",
                str(g.bytes),
                "static" if g.is_static else f"{g.age_s:.1f}",
            )
        rejected = ", ".join(f"{k} {v}" for k, v in _rejected(snap).items() if v) or "none"
        foot = Text(
            f"{len(gateways)} gateway(s) · balanced {c.service} · without gateway "
            f"{c.no_gateway_passed + c.no_gateway_dropped} · registrations {c.reg_accepted} accepted, "
            f"rejected: {rejected} · expired {c.expired} · pins in {self.pin_path}"
        )
        return Group(head, table if gateways else Text("no gateways registered", style="yellow"), foot)

    def close(self) -> None:
        self.live.stop()


# ---------------------------------------------------------------- the foreground process
