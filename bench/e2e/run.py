"""End-to-end UDP load-balancer benchmark: no LB, ebpflb, nftables and nginx behind a socket
sender (issue 4), and a NIC-like topology that injects frames into XDP (issue 12).

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
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the repository root, for bench.micro_* (the replay harness and ebpflb's loader)
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import deps  # noqa: E402
import netns  # noqa: E402
import perf_profile  # noqa: E402
from balancers import REPO_ROOT, Balancer, Direct, Ebpflb, Nftables, Nginx, ebpflb_available  # noqa: E402
from cleanup import Cleanup  # noqa: E402
from measure import SATURATION_REPEATS, SWEEP_FRACTIONS, ConfigResult, Options, Point  # noqa: E402
from programs import compile_programs  # noqa: E402
from rig import Rig  # noqa: E402

TOPOLOGIES = ("socket", "nic")
NIC_ROUNDS = 5
WEIGHT_CHANGE_WEIGHTS = [1 + i % 4 for i in range(256)]

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


def run_nic_gateway_count(systems: list, weights: list[int], run_tag: str, binaries: dict[str, str],
                          objects: dict[str, Path], options: Options, scratch: str, rounds: int,
                          profile: bool, profiles: dict) -> list:
    """The NIC-like topology for one N: all systems side by side, interleaved in rounds."""
    from nic_rig import NicRig
    print(f"== NIC-like, N={len(weights)} gateways, weights {weights}", flush=True)
    rigs = [NicRig(s, weights, run_tag, binaries, objects, options, scratch) for s in systems]
    try:
        for rig in rigs:
            rig.start()
        for _round in range(rounds):
            for rig in rigs:
                log_nic_point(rig.result, rig.measure())
        if profile:
            for rig in rigs:
                if rig.system.key in ("nic-spread", "nic-ebpflb", "nic-ebpflb-affinity", "nic-nftables"):
                    profiles[f"{rig.system.label}, N={len(weights)}"] = shares = rig.profile(PROFILE_SECONDS)
                    print(f"  profile {rig.system.label}: {shares}", flush=True)
    finally:
        for rig in rigs:
            rig.stop()
    return [rig.result for rig in rigs]


def run_nic_weight_changes(run_tag: str, binaries: dict[str, str], objects: dict[str, Path],
                           options: Options, scratch: str, rounds: int) -> list:
    """ebpflb with 256 gateways: rounds alternate a run without changes, one with a weight
    change every millisecond as the gateways' registration datagrams, and one with the same
    changes through the control program, on the same instance."""
    from balancers import REGISTRATION_PORT
    from nic_measure import NicResult
    from nic_report import CHANGES_KEY, CONTROL_CHANGES_KEY
    from nic_rig import NicRig
    from nic_systems import weight_change_system
    from weight_changes import INTERVAL_S, VIA_CONTROL, VIA_REGISTRATION, WeightChanger
    system = weight_change_system()
    print(f"== NIC-like, {len(WEIGHT_CHANGE_WEIGHTS)} gateways, weight changes every "
          f"{INTERVAL_S * 1e3:g} ms", flush=True)
    rig = NicRig(system, WEIGHT_CHANGE_WEIGHTS, run_tag, binaries, objects, options, scratch)
    every = f"a weight change every {INTERVAL_S * 1e3:g} ms"
    changing = {
        VIA_REGISTRATION: NicResult(CHANGES_KEY, f"{system.label}, {every} (registrations)", "nic", True,
                                    rig.result.ports, rig.result.weights),
        VIA_CONTROL: NicResult(CONTROL_CHANGES_KEY, f"{system.label}, {every} (control program)", "nic", True,
                               rig.result.ports, rig.result.weights),
    }
    try:
        rig.start()
        if rig.ok:
            changers = {via: WeightChanger(system.pin_path, rig.result.ports, rig.result.weights,
                                           options.gateway_cpu, via, system.xdp_fd, REGISTRATION_PORT)
                        for via in changing}
            for _round in range(rounds):
                log_nic_point(rig.result, rig.measure())
                for via, result in changing.items():
                    log_nic_point(result, rig.measure(during=changers[via]))
        for result in changing.values():
            result.error = rig.result.error
    finally:
        rig.stop()
    return [rig.result, *changing.values()]


def log_nic_point(result, point) -> None:
    if point is None:
        return
    result.points.append(point)
    mode = " KSOFTIRQD" if point.ksoftirqd_mode else ""
    print(f"  {result.label:44} delivered {point.delivered_pps / 1e3:7.1f} kpps  loss {100 * point.loss:6.3f} %  "
          f"cpu {point.cpu_ns_per_datagram:5.0f} ns/dgram  ksoftirqd {100 * point.ksoftirqd_share:4.1f} %{mode}  "
          f"csum err {point.udp_delta['InCsumErrors']}  rcvbuf err {point.udp_delta['RcvbufErrors']}"
          + (f"  replies {point.replies}" if point.replies else "")
          + (f"  changes {point.changes}" if point.changes else ""), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.5, help="duration of each point")
    parser.add_argument("--payload", type=int, default=32, help="UDP payload bytes")
    parser.add_argument("--gateways", default="3,16", help="gateway counts to run (3 and/or 16)")
    parser.add_argument("--systems", default="",
                        help="comma-separated keys to run (default: all); NIC-like keys start with nic-")
    parser.add_argument("--topology", default="both", choices=("both", *TOPOLOGIES),
                        help="socket: sender socket over veth; nic: frames injected into XDP; both")
    parser.add_argument("--nic-rounds", type=int, default=NIC_ROUNDS, help="rounds of the NIC-like topology")
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
    if netns.ensure_bpffs():  # pushed first, so it runs last: the machine as it was found
        cleanup.push("bpffs mount", lambda: netns.sh("umount", netns.BPFFS, check=False))
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
    wanted = set(args.systems.split(",")) if args.systems else None
    topologies = TOPOLOGIES if args.topology == "both" else (args.topology,)
    balancers = all_balancers() if "socket" in topologies else []
    if wanted:
        balancers = [b for b in balancers if b.key in wanted]
    usable, reason = ebpflb_available()
    skipped = {}
    if not usable:
        skipped = {b.key: f"ebpflb CLI not usable: {reason}" for b in balancers if isinstance(b, Ebpflb)}
        balancers = [b for b in balancers if not isinstance(b, Ebpflb)]

    started = time.time()
    results = []
    profile = not args.no_profile and perf_profile.available()
    counts = [int(v) for v in args.gateways.split(",")]
    if balancers:
        for index, n in enumerate(counts):
            results += run_gateway_count(balancers, WEIGHTS[n], run_tag, binaries, options, scratch,
                                         profile and index == 0)
    nic_results: list = []
    nic_profiles: dict = {}
    if "nic" in topologies:
        from nic_systems import WEIGHT_CHANGE_KEY, all_systems

        from bench.micro_build import build_objects
        objects_dir = Path(scratch) / "bpf"
        objects_dir.mkdir()
        objects = build_objects(objects_dir)
        for index, n in enumerate(counts):
            systems = [s for s in all_systems() if not wanted or s.key in wanted]
            if systems:
                nic_results += run_nic_gateway_count(systems, WEIGHTS[n], run_tag, binaries, objects, options,
                                                     scratch, args.nic_rounds, profile and index == len(counts) - 1,
                                                     nic_profiles)
        if not wanted or WEIGHT_CHANGE_KEY in wanted:
            nic_results += run_nic_weight_changes(run_tag, binaries, objects, options, scratch, args.nic_rounds)
    elapsed = time.time() - started

    if args.results:
        with open(args.results, "w") as handle:
            json.dump({"options": vars(options), "elapsed": elapsed, "skipped": skipped,
                       "results": [r.as_dict() for r in results],
                       "nic": [r.as_dict() for r in nic_results], "nic_profiles": nic_profiles},
                      handle, indent=1)
    publish(results, options, skipped, elapsed, not args.no_docs, nic_results, nic_profiles)
    return 0


def report_only(args: argparse.Namespace) -> int:
    deps.ensure_python_module("matplotlib")
    with open(args.report_only) as handle:
        data = json.load(handle)
    from nic_measure import NicResult
    results = [ConfigResult.from_dict(r) for r in data["results"]]
    nic_results = [NicResult.from_dict(r) for r in data.get("nic", [])]
    publish(results, Options(**data["options"]), data["skipped"], data["elapsed"], not args.no_docs,
            nic_results, data.get("nic_profiles", {}))
    return 0


def publish(results: list[ConfigResult], options: Options, skipped: dict, elapsed: float,
            docs: bool, nic_results: list | None = None, nic_profiles: dict | None = None) -> None:
    import nic_report
    import report  # after deps: it needs matplotlib

    table = report.build_table(results)
    if results:
        print()
        print("Socket-sender topology")
        print(report.format_text(table))
        print()
        for line in report.target_checks(table):
            print(line)
    if nic_results:
        print()
        print("NIC-like topology")
        print(report.format_rows(nic_report.HEADERS, nic_report.table_rows(nic_report.build_table(nic_results))))
        changes = nic_report.change_rows(nic_results)
        if changes:
            print()
            print(report.format_rows(nic_report.CHANGE_HEADERS, changes))
        print()
        for line in nic_report.target_checks(nic_results):
            print(line)
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    if docs:
        folder = os.path.join(REPO_ROOT, "docs")
        report.write_plot(results, os.path.join(folder, "benchmarks.png"), nic_results)
        report.write_markdown(results, table, options, skipped, elapsed,
                              os.path.join(folder, "benchmarks.md"), nic_results, nic_profiles)
        print(f"wrote {folder}/benchmarks.md and {folder}/benchmarks.png")
    print(f"measured for {elapsed:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
