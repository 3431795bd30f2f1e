"""End-to-end UDP load-balancer benchmark (issue 4): no LB, ebpflb, nftables and nginx.

Run as root from the repository root: python3 bench/e2e/run.py  (make bench-e2e).
Everything runs inside network namespaces this script creates and always removes again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deps  # noqa: E402
import netns  # noqa: E402
from balancers import (REPO_ROOT, Balancer, Context, Direct, Ebpflb, Nftables, Nginx,  # noqa: E402
                       ebpflb_available)
from cleanup import Cleanup  # noqa: E402
from measure import ConfigResult, Options, Point, measure_point, sweep  # noqa: E402
from programs import Gateways, compile_programs  # noqa: E402

FIRST_GATEWAY_PORT = 4001
WEIGHTS = {3: [1, 2, 3], 16: [1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1]}
WARMUP_RATE = 20000
WARMUP_SECONDS = 0.5
# An unpaced run first, discarded: the first saturated run of a fresh setup is reliably slower.
SETTLE_SECONDS = 1.5


def all_balancers() -> list[Balancer]:
    return [
        Direct("veth"),
        Ebpflb("veth", "native"),
        Ebpflb("veth", "skb"),
        Nftables(),
        Nginx(),
        Direct("lo"),
        Ebpflb("lo", "skb"),
    ]


def log_point(point: Point) -> None:
    target = "unpaced" if point.target_pps == 0 else f"{point.target_pps / 1e3:.0f}k"
    print(f"    {target:>8}: offered {point.offered_pps / 1e3:7.1f} kpps  delivered "
          f"{point.delivered_pps / 1e3:7.1f} kpps  loss {100 * point.loss:6.2f} %  "
          f"cpu {point.cpu_ns_per_datagram:7.0f} ns/dgram  bg {100 * point.background:3.0f}/{100 * point.background_after:3.0f} %  "
          f"rcvbuf err {point.udp_delta['RcvbufErrors']} csum err {point.udp_delta['InCsumErrors']}", flush=True)


def check_warmup(result: ConfigResult, point: Point, balancer: Balancer, ctx: Context) -> None:
    """The LB must reach every gateway (or, without LB, only the addressed one) before measuring."""
    if balancer.balances:
        silent = [p for p, c in point.per_port.items() if c == 0]
        if silent:
            raise RuntimeError(f"warm-up: gateways {silent} received nothing: {point.per_port}")
    if point.loss > 0.01:
        raise RuntimeError(f"warm-up lost {100 * point.loss:.1f} % of {point.sent} datagrams")
    if isinstance(balancer, Nftables):
        # The rule counter proves the rewrite ran once per datagram.
        result.notes.append(f"nft rule counter after warm-up: {balancer.rule_packets(ctx)} "
                            f"for {point.sent} datagrams sent")


def run_config(balancer: Balancer, n: int, run_tag: str, binaries: dict[str, str],
               options: Options, scratch_root: str) -> ConfigResult:
    ports = [FIRST_GATEWAY_PORT + i for i in range(n)]
    weights = WEIGHTS[n]
    result = ConfigResult(balancer.key, balancer.label, balancer.topology, balancer.balances,
                          ports, weights)
    scratch = tempfile.mkdtemp(prefix=f"{balancer.key}-{n}-", dir=scratch_root)
    if balancer.topology == "veth":
        pair = netns.VethPair(f"{run_tag}-snd", f"{run_tag}-rcv")
        ctx = Context(run_tag, pair.sender_ns, pair.receiver_ns, ports, weights, scratch)
    else:
        pair = None
        ctx = Context(run_tag, f"{run_tag}-lo", f"{run_tag}-lo", ports, weights, scratch)
    gateways = None
    print(f"== {balancer.label}, N={n}, weights {weights}", flush=True)
    try:
        if pair:
            pair.create()
        else:
            netns.create_namespace(ctx.receiver_ns)
        balancer.setup(ctx)
        register = 3000 if balancer.registers else None
        gateways = Gateways(binaries["gateway"], ctx.receiver_ns, ports, weights,
                            options.gateway_cpu, register, options.gateway_poll_us)
        balancer.ready(ctx)
        warmup = measure_point(ctx, balancer, gateways, binaries["sender"], WARMUP_RATE,
                               WARMUP_SECONDS, options)
        check_warmup(result, warmup, balancer, ctx)
        measure_point(ctx, balancer, gateways, binaries["sender"], 0, SETTLE_SECONDS, options)
        sweep(ctx, balancer, gateways, binaries["sender"], options, result, log_point)
    except Exception as error:  # one broken system must not lose the others' results
        result.error = str(error)
        print(f"   FAILED: {error}", flush=True)
    finally:
        if gateways:
            gateways.stop()
        balancer.teardown(ctx)
        if pair:
            pair.delete()
        else:
            netns.delete_namespace(ctx.receiver_ns)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each point")
    parser.add_argument("--payload", type=int, default=32, help="UDP payload bytes")
    parser.add_argument("--gateways", default="3,16", help="gateway counts to run (3 and/or 16)")
    parser.add_argument("--systems", default="", help="comma-separated keys to run (default: all)")
    parser.add_argument("--gateway-poll-us", type=int, default=1000,
                        help="gateways drain sockets every N us; 0 = block in epoll (wake-ups)")
    parser.add_argument("--results", default="", help="also write raw results as JSON here")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.*")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark creates network namespaces", file=sys.stderr)
        return 2
    deps.ensure_all()
    import report  # after deps: it needs matplotlib

    cleanup = Cleanup()
    cleanup.install()
    run_tag = f"{netns.PREFIX}{os.getpid()}"
    netns.remove_stale()
    netns.ensure_bpffs()
    scratch = tempfile.mkdtemp(prefix=f"{run_tag}-")
    cleanup.push("scratch dir", lambda: shutil.rmtree(scratch, ignore_errors=True))
    # Safety net: whatever a failed step left behind carries this run's tag.
    cleanup.push("namespaces", lambda: [netns.delete_namespace(ns) for ns in netns.list_namespaces()
                                        if ns.startswith(run_tag)])
    cleanup.push("bpffs pins", lambda: [shutil.rmtree(os.path.join(netns.BPFFS, e), ignore_errors=True)
                                        for e in os.listdir(netns.BPFFS) if e.startswith(run_tag)])

    options = Options(seconds=args.seconds, payload=args.payload,
                      gateway_poll_us=args.gateway_poll_us)
    binaries = compile_programs(scratch)
    balancers = all_balancers()
    if args.systems:
        wanted = set(args.systems.split(","))
        balancers = [b for b in balancers if b.key in wanted]
    usable, reason = ebpflb_available()
    skipped = {}
    if not usable:
        for b in balancers:
            if isinstance(b, Ebpflb):
                skipped[b.key] = f"ebpflb CLI not usable: {reason}"
        balancers = [b for b in balancers if not isinstance(b, Ebpflb)]

    started = time.time()
    results = []
    for n in (int(v) for v in args.gateways.split(",")):
        for balancer in balancers:
            results.append(run_config(balancer, n, run_tag, binaries, options, scratch))
    elapsed = time.time() - started

    if args.results:
        with open(args.results, "w") as handle:
            json.dump([r.as_dict() for r in results], handle, indent=1)
    table = report.build_table(results)
    print()
    print(report.format_text(table))
    for key, reason in skipped.items():
        print(f"skipped {key}: {reason}")
    if not args.no_docs:
        docs = os.path.join(REPO_ROOT, "docs")
        report.write_plot(results, os.path.join(docs, "benchmarks.png"))
        report.write_markdown(results, table, options, skipped, elapsed,
                              os.path.join(docs, "benchmarks.md"))
        print(f"wrote {docs}/benchmarks.md and benchmarks.png")
    print(f"total {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
