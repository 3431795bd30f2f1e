"""`trace`: the kernel's registration events, followed from the trace pipe."""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, List, Optional

import typer

from ebpflb.cli.common import (
    PinPath,
    app,
    err,
    out,
    run,
)
from ebpflb.cli.trace_events import TraceEvent, follow, trace_pipe, tracing_is_on
from ebpflb.dataplane import Instance, default_pin_path
from ebpflb.errors import EbpflbError

TRACE_STYLES = {"add": "green", "weight": "cyan", "remove": "yellow", "expire": "magenta", "reject": "red"}




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
