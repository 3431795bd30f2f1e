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
import perf_profile  # noqa: E402
from balancers import REPO_ROOT, Balancer, Direct, Ebpflb, Nftables, Nginx, ebpflb_available  # noqa: E402
from cleanup import Cleanup  # noqa: E402
from measure import SATURATION_REPEATS, SWEEP_FRACTIONS, ConfigResult, Options, Point  # noqa: E402
from programs import compile_programs  # noqa: E402
from rig import Rig  # noqa: E402

PROFILE_SECONDS = 2.0
WEIGHTS = {3: [1, 2, 3], 16: [1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1]}


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


def log_point(rig: Rig, point: Point | None) -> None:
    if point is None:
        return
    target = "unpaced" if point.target_pps == 0 else f"{point.target_pps / 1e3:.0f}k"
    print(f"  {rig.balancer.label:26} {target:>8}: offered {point.offered_pps / 1e3:6.1f} kpps  "
          f"delivered {point.delivered_pps / 1e3:6.1f} kpps  loss {100 * point.loss:6.2f} %  "
          f"cpu {point.cpu_ns_per_datagram:6.0f} ns/dgram  steal {100 * point.steal_ns / (point.busy_ns or 1):2.0f} %  "
          f"bg {100 * point.background:2.0f}/{100 * point.background_after:2.0f} %  "
          f"rcvbuf err {point.udp_delta['RcvbufErrors']}  csum err {point.udp_delta['InCsumErrors']}",
          flush=True)


def run_gateway_count(balancers: list[Balancer], weights: list[int], run_tag: str,
                      binaries: dict[str, str], options: Options, scratch: str,
                      profile: bool) -> list[ConfigResult]:
    """All systems set up side by side; each round measures every system once, so slow drifts
    of a shared machine hit all systems alike."""
    print(f"== N={len(weights)} gateways, weights {weights}", flush=True)
    rigs = [Rig(b, weights, run_tag, binaries, options, scratch) for b in balancers]
    try:
        for rig in rigs:
            rig.start()
        for _round in range(SATURATION_REPEATS):
            for rig in rigs:
                log_point(rig, rig.measure(0))
        for fraction in SWEEP_FRACTIONS:
            for rig in rigs:
                saturation = rig.result.saturation
                if rig.ok and saturation and fraction * saturation.delivered_pps >= 1000:
                    log_point(rig, rig.measure(round(fraction * saturation.delivered_pps, -3)))
        if profile:
            for rig in rigs:
                if not isinstance(rig.balancer, Nginx):  # nginx's cost is in its own process
                    rig.profile(PROFILE_SECONDS)
                    print(f"  profile {rig.balancer.label}: {rig.result.profile}", flush=True)
    finally:
        for rig in rigs:
            rig.stop()
    return [rig.result for rig in rigs]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.5, help="duration of each point")
    parser.add_argument("--payload", type=int, default=32, help="UDP payload bytes")
    parser.add_argument("--gateways", default="3,16", help="gateway counts to run (3 and/or 16)")
    parser.add_argument("--systems", default="", help="comma-separated keys to run (default: all)")
    parser.add_argument("--gateway-poll-us", type=int, default=1000,
                        help="gateways drain sockets every N us; 0 = block in epoll (wake-ups)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the perf profile of the sender CPU (taken for the first N only)")
    parser.add_argument("--results", default="", help="also write raw results as JSON here")
    parser.add_argument("--report-only", default="",
                        help="measure nothing: rebuild table and docs from a --results JSON file")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.*")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.report_only:
        return report_only(args)
    if os.geteuid() != 0:
        print("run as root: the benchmark creates network namespaces", file=sys.stderr)
        return 2
    deps.ensure_all()
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
        skipped = {b.key: f"ebpflb CLI not usable: {reason}" for b in balancers if isinstance(b, Ebpflb)}
        balancers = [b for b in balancers if not isinstance(b, Ebpflb)]

    started = time.time()
    results = []
    profile = not args.no_profile and perf_profile.available()
    for index, n in enumerate(int(v) for v in args.gateways.split(",")):
        results += run_gateway_count(balancers, WEIGHTS[n], run_tag, binaries, options, scratch,
                                     profile and index == 0)
    elapsed = time.time() - started

    if args.results:
        with open(args.results, "w") as handle:
            json.dump({"options": vars(options), "elapsed": elapsed, "skipped": skipped,
                       "results": [r.as_dict() for r in results]}, handle, indent=1)
    publish(results, options, skipped, elapsed, not args.no_docs)
    return 0


def report_only(args: argparse.Namespace) -> int:
    deps.ensure_python_module("matplotlib")
    with open(args.report_only) as handle:
        data = json.load(handle)
    results = [ConfigResult.from_dict(r) for r in data["results"]]
    publish(results, Options(**data["options"]), data["skipped"], data["elapsed"], not args.no_docs)
    return 0


def publish(results: list[ConfigResult], options: Options, skipped: dict, elapsed: float,
            docs: bool) -> None:
    import report  # after deps: it needs matplotlib

    table = report.build_table(results)
    print()
    print(report.format_text(table))
    print()
    for line in report.target_checks(table):
        print(line)
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    if docs:
        folder = os.path.join(REPO_ROOT, "docs")
        report.write_plot(results, os.path.join(folder, "benchmarks.png"))
        report.write_markdown(results, table, options, skipped, elapsed,
                              os.path.join(folder, "benchmarks.md"))
        print(f"wrote {folder}/benchmarks.md and {folder}/benchmarks.png")
    print(f"measured for {elapsed:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
