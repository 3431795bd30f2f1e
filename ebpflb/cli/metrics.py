"""`metrics` and `exporter`: the instance's Prometheus metrics, once or over HTTP."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from ebpflb.cli.common import PinPath, UsageError, app, err, out, run
from ebpflb.dataplane import default_pin_path
from ebpflb.errors import EbpflbError
from ebpflb.metrics.exporter import DEFAULT_LISTEN, MetricsServer, parse_listen

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

Listen = Annotated[
    str,
    typer.Option("--listen", metavar="HOST:PORT", help="Address to serve /metrics on ([::1]:PORT for IPv6)."),
]


@app.command()
def metrics(pin_path: PinPath = None) -> None:
    """Print the Prometheus metrics once (for node_exporter's textfile collector and scripts)."""
    from ebpflb.metrics.collector import exposition  # prometheus-client: only for the commands that use it

    text, error = exposition(pin_path or default_pin_path())
    sys.stdout.write(text)
    if error:  # the exposition still says ebpflb_up 0, so a textfile stays truthful
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


@app.command()
def exporter(listen: Listen = DEFAULT_LISTEN, pin_path: PinPath = None) -> None:
    """Serve the Prometheus metrics at http://HOST:PORT/metrics until SIGTERM or Ctrl-C."""
    pin_path = pin_path or default_pin_path()
    try:
        parse_listen(listen)
    except EbpflbError as e:
        raise UsageError(f"--listen: {e}") from None
    # blocked before the server's thread starts, which inherits the mask: only sigwait sees them
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        server = run(lambda: MetricsServer(pin_path, listen, complain))
        try:
            host, port = server.address
            shown = f"[{host}]" if ":" in host else host
            say(f"serving http://{shown}:{port}/metrics for {pin_path}; SIGTERM or Ctrl-C stops")
            received = signal.sigwait(STOP_SIGNALS)
        finally:
            server.close()
        say(f"stopped by {signal.Signals(received).name}")
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def say(text: str) -> None:
    out.print(f"ebpflb exporter: {text}", highlight=False, soft_wrap=True, markup=False)


def complain(text: str) -> None:
    """Why a scrape could not read the instance, and when it can again: on stderr, once each."""
    err.print(f"ebpflb exporter: {text}", highlight=False, soft_wrap=True, markup=False)
