"""`make bench`: the in-kernel microbenchmark of ebpflb, with BPF_PROG_TEST_RUN.

1. ns per datagram of the service path at 1, 8, 64 and 256 gateways, against XDP_PASS;
2. the rejected designs (O(N) lowest packets/weight scan, locked smooth WRR), same packet;
3. the cost of a registration that changes a weight (a schedule rebuild);
4. the non-service path against XDP_PASS;
5. the service path with --affinity (flow found, new flow) and the reply NAT per reply.
Prints the tables and writes them to docs/microbench.md. Needs root and a mounted bpffs;
attaches nothing to any interface and removes every pin it made, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Optional

from rich.console import Console

from ebpflb.errors import EbpflbError

from .micro_build import REPO, build_objects
from .micro_checks import VerificationError
from .micro_flows import run_flow_benchmarks
from .micro_machine import Machine, cpu_report, cpu_ticks, load_average
from .micro_objects import BenchObjects
from .micro_packets import udp4_frame
from .micro_rebuild import run_rebuild_benchmarks
from .micro_report import (
    cpu_time_agreement,
    flows_table,
    markdown,
    other_table,
    print_report,
    rebuild_table,
    rebuild_verdicts,
    rejected_table,
    service_table,
    verified_total,
)
from .micro_service import OTHER_PORT, SERVICE_PORT, run_service_benchmarks

PAYLOAD = bytes(range(32))
SOURCE_PORT = 40000


def method_text(rounds: int, round_ms: float, agreement: float) -> list[str]:
    return [
        "BPF_PROG_TEST_RUN runs a program `repeat` times on one packet buffer and reports the mean time per "
        "run. ebpflb rewrites the destination port of a service datagram, so from the second repetition on "
        "the buffer would hold a datagram for a gateway's port, and a naive run would time the non-service path.",
        "",
        "**The harness.** The program actually run is `bench/bpf/replay.bpf.c`: per repetition it writes back "
        "the datagram's original destination port and UDP checksum (two 16-bit stores) and tail-calls the "
        "program under test. ebpflb is the shipped object, unmodified, loaded with ebpflb's own loader over a "
        "temporary pin directory (no interface attached). So every repetition is the same service datagram and "
        "the scheduler steps through the real schedule of all N gateways. The XDP_PASS baseline, the parser "
        "alone and the rejected designs run under the same harness, so its cost cancels in every difference.",
        "",
        "**Verification.** Every run is checked before its time is kept. ebpflb: the service counter grew by "
        "exactly `repeat`; every gateway's packet counter by exactly `repeat` × weight / sum(weights) (weights "
        "1, 2, 3, 4, 1, ...; `repeat` is a whole number of schedule cycles); no other counter moved (no rebuild, "
        "no expiry); the verdict is XDP_PASS and the last datagram carries a gateway's port with a valid "
        "checksum. The rejected designs: their counts equal exact Python models of their order after the same "
        "number of datagrams. Baselines: XDP_PASS and the frame returned byte for byte.",
        "",
        "**Cross-check without harness.** With a single gateway whose port is the service port, ebpflb's "
        "rewrite leaves the datagram as it was, so a plain run stays on the service path (row '1, no harness'): "
        "its difference to a plain XDP_PASS should match the harness's row at 1 gateway.",
        "",
        f"**Timing.** `repeat` is calibrated so that one run takes about {round_ms:.0f} ms. {rounds} rounds, each "
        "running every case once in a rotating order, so that drift of the machine hits all cases alike. The "
        "tables give the median and quartiles over rounds of the kernel's ns per repetition; differences and "
        "ratios are taken per round between runs made next to each other. The process is pinned to one CPU. "
        "The kernel's figure (whole ns) and the thread's CPU time per repetition agreed within "
        f"{agreement:.0%} (median per case). On a VM, another busy vCPU (a sibling hyperthread, or the host's "
        "other load) can slow every figure here about twofold; ratios move much less than absolute ns, and the "
        "Machine section says how busy the other CPUs were during this run.",
        "",
        "**Weight changes.** A gateway among N static ones alternates between two weights, so every change "
        "needs a new schedule (earliest-deadline-first over one cycle, O(length + N), built a bounded step per "
        "datagram into a buffer readers do not use). Each change is a registration datagram; service "
        "datagrams follow, each timed on its own (repeat 1), until the new schedule is published.",
    ]


def choose_cpu(requested: Optional[int]) -> int:
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if requested is None else requested
    os.sched_setaffinity(0, {cpu})
    return cpu


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, console: Console) -> int:
    cpu = choose_cpu(args.cpu)
    machine = Machine.describe(cpu)
    load_before = load_average()
    ticks_before = cpu_ticks()
    started = time.monotonic()
    service_frame = udp4_frame(SOURCE_PORT, SERVICE_PORT, PAYLOAD)
    other_frame = udp4_frame(SOURCE_PORT, OTHER_PORT, PAYLOAD)
    round_s = args.round_ms / 1000

    def progress(what: str) -> None:
        console.print(f"[dim]measuring {what}[/]")

    with tempfile.TemporaryDirectory(prefix="ebpflb-microbench-") as build_dir:
        paths = build_objects(Path(build_dir))
        objects = BenchObjects(paths, service_frame, SERVICE_PORT)
        try:
            groups = run_service_benchmarks(objects, service_frame, other_frame, args.rounds, round_s, progress)
            flows = run_flow_benchmarks(objects, paths, service_frame, args.rounds, round_s, progress)
            rebuilds = run_rebuild_benchmarks(
                args.changes, service_frame, objects.replay, objects.pass_fd, cpu, progress
            )
        finally:
            objects.close()

    service, service_verdict = service_table(groups, args.rounds)
    rejected, rejected_verdict = rejected_table(groups)
    flows_data, flows_verdicts = flows_table(flows, args.rounds)
    tables = [service, rejected, rebuild_table(rebuilds), other_table(groups, args.rounds), flows_data]
    verdicts = [service_verdict, rejected_verdict, *rebuild_verdicts(rebuilds), *flows_verdicts]
    method = method_text(args.rounds, args.round_ms, cpu_time_agreement(groups))
    context = [
        f"Load average {load_before} at the start, {load_average()} at the end (other work shares the machine); "
        f"{cpu_report(cpu, ticks_before)}.",
        f"{verified_total(groups):,} datagrams run and verified; run took {time.monotonic() - started:.0f} s "
        f"on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
    ]
    print_report(console, tables, verdicts, method)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown(machine, tables, verdicts, method, context))
        console.print(f"written to {output}", highlight=False)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=41, help="rounds per case (default 41)")
    parser.add_argument("--round-ms", type=float, default=10, help="target length of one run (default 10 ms)")
    parser.add_argument("--changes", type=int, default=1000, help="weight changes per case (default 1000)")
    parser.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    parser.add_argument(
        "--output", default=str(REPO / "docs" / "microbench.md"), help="Markdown report ('' to skip writing)"
    )
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a log file: no wrapping of the tables
    err = Console(stderr=True)
    if os.geteuid() != 0:
        err.print("[red]the microbenchmark loads BPF programs: run it as root[/]")
        return 1
    # SIGINT too: a shell starts background jobs with it ignored, and Python keeps that
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        return run(args, console)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: every pin and program of this run was removed[/]")
        return 130
    except VerificationError as e:
        err.print(f"[red]a run did not take the path it was meant to measure: {e}[/]", highlight=False)
        return 1
    except (EbpflbError, RuntimeError, OSError) as e:
        err.print(f"[red]{e}[/]", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
