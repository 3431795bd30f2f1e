"""The ebpflb command line: one module per command group, all on one Typer app."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ebpflb.cli import gateways, lifecycle, metrics, status, top, trace  # noqa: F401  (importing them registers their commands)
from ebpflb.cli.common import UsageError, app, err
from ebpflb.cli.lifecycle import run_cmd


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
    except KeyboardInterrupt:  # Ctrl-C before a command took over its own clean-up
        err.print("[red]error:[/red] interrupted", highlight=False)
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
