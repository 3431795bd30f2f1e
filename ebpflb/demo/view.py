"""How the demo looks: a live rich table in a terminal, one plain line per second when piped,
and the closing summary (plain lines that tests/test_demo.py reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

BAR_MAX, BAR_MIN = 28, 8
OTHER_COLUMNS_WIDTH = 60  # everything in a table row but the bar


@dataclass
class Row:
    port: int
    state: str  # "live", "silent", "expired", "stopped"
    kernel_weight: Optional[int]  # None: not in the kernel's table
    target: Optional[float]  # weight share, 0-1
    share: Optional[float]  # packet share in this phase, 0-1
    received: int  # datagrams the gateway's socket received in total


@dataclass
class Phase:
    number: int
    title: str
    weights: dict[int, int]  # port -> weight in the kernel during the phase
    start_s: float
    start_packets: dict[int, int]
    end_s: Optional[float] = None
    end_packets: dict[int, int] = field(default_factory=dict)

    def shares(self, packets: dict[int, int]) -> tuple[dict[int, float], int]:
        """Each gateway's share of what the kernel sent during the phase, and the total."""
        delta = {port: packets.get(port, 0) - self.start_packets.get(port, 0) for port in self.weights}
        total = sum(delta.values())
        return {port: (n / total if total else 0.0) for port, n in delta.items()}, total

    def targets(self) -> dict[int, float]:
        total = sum(self.weights.values())
        return {port: w / total for port, w in self.weights.items()}


@dataclass
class Frame:
    """Everything one refresh shows."""

    elapsed_s: float
    headline: str
    phase: Phase
    rows: list[Row]
    sent: int
    events: list[tuple[float, str]]
    upcoming: str


def percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:5.1f} %"


STATE_STYLE = {"live": "green", "silent": "yellow", "expired": "red", "stopped": "dim"}


def share_bar(share: Optional[float], target: Optional[float], width: int) -> Text:
    """A bar of the measured share with a tick where the weight says it should end."""
    if share is None:
        return Text("")
    filled = round(share * width)
    tick = None if target is None else min(width - 1, round(target * width))
    text = Text()
    for i in range(width):
        if i == tick:
            text.append("│", style="bold white")
        elif i < filled:
            text.append("█", style="cyan")
        else:
            text.append("·", style="grey37")
    text.append(f" {percent(share)}")
    return text


def render(frame: Frame, console_width: int) -> RenderableType:
    bar_width = max(BAR_MIN, min(BAR_MAX, console_width - OTHER_COLUMNS_WIDTH))
    title = Text.assemble(("ebpflb demo", "bold cyan"), "  ", (frame.headline, "dim"))
    table = Table(
        title=f"phase {frame.phase.number}: {frame.phase.title}",
        title_justify="left",
        title_style="bold",
        box=box.ROUNDED,
        caption=f"{frame.elapsed_s:5.1f} s · {frame.sent} datagrams sent to the service port · │ = target",
        caption_justify="left",
    )
    table.add_column("port", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("target", justify="right", no_wrap=True)
    table.add_column("share this phase", no_wrap=True, min_width=bar_width + 8)
    table.add_column("received", justify="right", no_wrap=True)
    for row in frame.rows:
        table.add_row(
            str(row.port),
            Text(row.state, style=STATE_STYLE.get(row.state, "")),
            "-" if row.kernel_weight is None else str(row.kernel_weight),
            percent(row.target),
            share_bar(row.share, row.target, bar_width),
            str(row.received),
        )
    events = Text()
    for at, what in frame.events[-6:]:
        events.append(f"{at:5.1f} s  ", style="dim")
        events.append(what + "\n")
    events.append(f"next: {frame.upcoming}", style="italic dim")
    return Group(title, table, events)


def plain_line(frame: Frame) -> str:
    cells = []
    for row in frame.rows:
        if row.kernel_weight is None:
            cells.append(f"{row.port} {row.state}")
        else:
            share, target = percent(row.share).strip(), percent(row.target).strip()
            cells.append(f"{row.port} w{row.kernel_weight} {share} (target {target})")
    return f"[{frame.elapsed_s:5.1f} s] phase {frame.phase.number}: " + " | ".join(cells) + f" | sent {frame.sent}"


def plain_event(at: float, what: str) -> str:
    return f"[{at:5.1f} s] {what}"


def print_summary(
    console: Console,
    phases: list[Phase],
    expiry_line: str,
    sent: int,
    received: int,
    cleanup: list[str],
) -> None:
    """The closing summary; tests/test_demo.py parses these lines, keep their shape."""
    console.print()
    console.print("[bold]Summary[/bold]")
    for phase in phases:
        if phase.end_s is None:
            continue
        shares, total = phase.shares(phase.end_packets)
        targets = phase.targets()
        console.print(
            f"phase {phase.number}: {phase.title} ({phase.end_s - phase.start_s:.1f} s, {total} datagrams balanced)",
            highlight=False,
        )
        for port in sorted(phase.weights):
            console.print(
                f"  gateway {port}  weight {phase.weights[port]:>2}  "
                f"target {100 * targets[port]:5.1f}%  measured {100 * shares[port]:5.1f}%",
                highlight=False,
            )
    console.print(expiry_line, highlight=False)
    lost = sent - received
    console.print(f"datagrams: sent {sent}, received by gateways {received}, lost {lost}", highlight=False)
    for line in cleanup:
        console.print(f"cleanup: {line}", highlight=False)
