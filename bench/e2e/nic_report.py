"""The NIC-like topology's table, target checks, method text and plot panels."""
from __future__ import annotations

import math
import statistics

from live_frames import BATCH_SIZE, FRAMES_PER_CALL, KSOFTIRQD_LIMIT
from measure import BACKGROUND_LIMIT, DRAIN_S
from nic_measure import NicPoint, NicResult
from nic_systems import AFFINITY_CLIENTS, WEIGHT_CHANGE_GATEWAYS, WEIGHT_CHANGE_KEY
from weight_changes import INTERVAL_S

CEILING, SPREAD, EBPFLB, AFFINITY, NFTABLES = ("nic-ceiling", "nic-spread", "nic-ebpflb",
                                               "nic-ebpflb-affinity", "nic-nftables")
CHANGES_KEY = WEIGHT_CHANGE_KEY + "-every-ms"  # as registration datagrams, the gateways' heartbeats
CONTROL_CHANGES_KEY = WEIGHT_CHANGE_KEY + "-every-ms-control"  # through the control program


def usable(p: NicPoint) -> bool:
    return not p.ksoftirqd_mode and not p.disturbed


def paired_ratio(r: NicResult | None, other: NicResult | None) -> float:
    """Median over rounds of r's delivered rate / other's, both measured in the same round and
    both in the normal mode (the same for CPU when attribute says so)."""
    if r is None or other is None or r.error or other.error:
        return math.nan
    ratios = [a.delivered_pps / b.delivered_pps for a, b in zip(r.points, other.points)
              if usable(a) and usable(b) and b.delivered_pps]
    return statistics.median(ratios) if ratios else math.nan


def find(results: list[NicResult], key: str, n: int) -> NicResult | None:
    return next((r for r in results if r.key == key and len(r.ports) == n), None)


def sat(r: NicResult | None, attribute: str) -> float:
    if r is None or r.error or r.saturation is None:
        return math.nan
    return float(getattr(r.saturation, attribute))


def build_table(results: list[NicResult]) -> list[dict]:
    rows = []
    for r in results:
        n = len(r.ports)
        normal = [p.delivered_pps / 1e3 for p in r.normal()]
        ksoft = r.ksoftirqd_points()
        point = r.saturation
        rows.append({
            "system": r.label, "key": r.key, "n": n, "error": r.error,
            "delivered": sat(r, "delivered_pps"),
            "range": f"{min(normal):.0f}-{max(normal):.0f}" if normal and not r.error else "-",
            "loss": sat(r, "loss"), "cpu": sat(r, "cpu_ns_per_datagram"),
            "weight_err": r.weight_error_pp(),
            "vs_ceiling": paired_ratio(r, find(results, CEILING, n)),
            "vs_spread": paired_ratio(r, find(results, SPREAD, n)),
            "ksoft": f"{len(ksoft)}/{len(r.points)}"
                     + (f" @{statistics.median(p.delivered_pps for p in ksoft) / 1e3:.0f}" if ksoft else ""),
            "replies": (point.replies / point.delivered if isinstance(point, NicPoint) and point.delivered
                        and r.key.endswith("reply-nat") else math.nan),
            "csum_err": sum(p.udp_delta.get("InCsumErrors", 0) for p in r.points),
            "disturbed": f"{sum(p.disturbed for p in r.points)}/{len(r.points)}",
        })
    return rows


HEADERS = ["system", "N", "delivered kpps", "range kpps", "loss %", "CPU ns/dgram", "weight err pp",
           "/ceiling", "/spread", "ksoftirqd-mode points (kpps)", "replies/delivered", "csum err",
           "disturbed"]


def num(value: float, fmt: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, fmt)


def cells(row: dict) -> list[str]:
    if row["error"]:
        return [row["system"], str(row["n"]), "failed: " + row["error"][:60]] + [""] * (len(HEADERS) - 3)
    return [row["system"], str(row["n"]), num(row["delivered"] / 1e3, ".0f"), row["range"],
            num(100 * row["loss"], ".3f"), num(row["cpu"], ".0f"), num(row["weight_err"], ".3f"),
            num(row["vs_ceiling"], ".3f"), num(row["vs_spread"], ".3f"), row["ksoft"],
            num(row["replies"], ".4f"), str(row["csum_err"]), row["disturbed"]]


def table_rows(table: list[dict]) -> list[list[str]]:
    return [cells(row) for row in table if not row["key"].startswith(WEIGHT_CHANGE_KEY)]


CHANGE_HEADERS = ["run", "N", "delivered kpps", "loss %", "lost datagrams", "weight changes/s",
                  "schedules published/s", "delivered / no change", "ksoftirqd-mode points"]


def change_rows(results: list[NicResult]) -> list[list[str]]:
    quiet = find(results, WEIGHT_CHANGE_KEY, WEIGHT_CHANGE_GATEWAYS)
    rows = []
    for r in (quiet, find(results, CHANGES_KEY, WEIGHT_CHANGE_GATEWAYS),
              find(results, CONTROL_CHANGES_KEY, WEIGHT_CHANGE_GATEWAYS)):
        if r is None:
            continue
        if r.error:
            rows.append([r.label, str(len(r.ports)), "failed: " + r.error[:60]] + [""] * 6)
            continue
        seconds = sum(p.send_seconds for p in r.points) or 1
        rebuilds = sum(p.counters.get("rebuilds", 0) for p in r.points if isinstance(p, NicPoint))
        rows.append([r.label, str(len(r.ports)), num(sat(r, "delivered_pps") / 1e3, ".0f"),
                     num(100 * sat(r, "loss"), ".3f"), str(sum(p.lost for p in r.points)),
                     f"{sum(p.changes for p in r.points) / seconds:.0f}", f"{rebuilds / seconds:.0f}",
                     num(paired_ratio(r, quiet), ".3f"), f"{len(r.ksoftirqd_points())}/{len(r.points)}"])
    return rows


def target_checks(results: list[NicResult]) -> list[str]:
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for n in sorted({len(r.ports) for r in results if not r.key.startswith(WEIGHT_CHANGE_KEY)}):
        for key, target in ((EBPFLB, 0.98), (AFFINITY, 0.95)):
            r = find(results, key, n)
            if r is None or r.error:
                continue
            value = paired_ratio(r, find(results, SPREAD, n))
            if math.isnan(value):
                lines.append(f"NIC-like, N={n}: {r.label}: no spread reference measured next to it")
                continue
            lines.append(f"NIC-like, N={n}: {r.label} delivered {value:.3f} of the spread reference "
                         f"(paired); target >= {target} {verdict(value >= target)}")
        lb, nft = find(results, EBPFLB, n), find(results, NFTABLES, n)
        if lb and nft and not lb.error and not nft.error:
            value = paired_ratio(lb, nft)
            cpu_lb, cpu_nft = sat(lb, "cpu_ns_per_datagram"), sat(nft, "cpu_ns_per_datagram")
            lines.append(f"NIC-like, N={n}: ebpflb delivered {value:.2f}x nftables numgen (paired); "
                         f"target >= 1.3x {verdict(value >= 1.3)}; CPU/dgram {cpu_lb:.0f} vs {cpu_nft:.0f} ns, "
                         f"lower {verdict(cpu_lb < cpu_nft)}")
    quiet = find(results, WEIGHT_CHANGE_KEY, WEIGHT_CHANGE_GATEWAYS)
    for key, how, judged in ((CHANGES_KEY, "as registration datagrams", True),
                             (CONTROL_CHANGES_KEY, "through the control program", False)):
        changing = find(results, key, WEIGHT_CHANGE_GATEWAYS)
        if not (quiet and changing and not quiet.error and not changing.error):
            continue
        value = paired_ratio(changing, quiet)
        lost = sum(p.lost for p in changing.points)
        sent = sum(p.sent for p in changing.points)
        lead = (f"NIC-like, {WEIGHT_CHANGE_GATEWAYS} gateways, a weight change every {INTERVAL_S * 1e3:g} ms "
                f"{how}: delivered {value:.3f} of the same run without changes (paired)")
        if judged:
            lines.append(f"{lead}, target >= 0.95 {verdict(value >= 0.95)}; lost {lost} of {sent} "
                         f"datagrams, target 0 {verdict(lost == 0)}")
        else:
            lines.append(f"{lead}; lost {lost} of {sent} datagrams (for reference: every change built in full "
                         "on the gateways' CPU before the call returns)")
    return lines


def method_lines(options) -> list[str]:
    return [
        "- **Topology.** No sender socket: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` "
        f"(repeat = {FRAMES_PER_CALL} frames per call, batch_size {BATCH_SIZE}, no data_out or ctx_out, "
        "ctx_in = `struct xdp_md` with the device's ingress_ifindex) runs the XDP program on frames "
        "from a page pool as a driver would and carries out its verdict: XDP_PASS frames become "
        "skbs handed to `netif_receive_skb_list()` as if received on the receiver end of a veth "
        "pair, in a namespace the benchmark creates, with nothing attached to that device (a "
        "program attached there would run a second time). The frames are Ethernet/IPv4/UDP with "
        f"{options.payload}-byte payloads, to the device's own MAC (else IP drops them) and to the "
        "namespace's address 10.199.0.2, from 10.199.0.1:40000, valid checksums (the stack verifies "
        "them in software; `InCsumErrors` is recorded). The injector is a thread that entered that "
        f"namespace, pinned to CPU {options.sender_cpu} under SCHED_FIFO; the N gateway sockets "
        f"(`gateway.c`) are drained on CPU {options.gateway_cpu}. Every system has its own namespaces, "
        "all set up side by side.",
        "- **Replay harness.** Pages are recycled without being rewritten, so a program would see "
        "the previous frame's rewrite; every system therefore runs under `bench/bpf/replay.bpf.c`, "
        "which restores the template's destination port and checksum and tail-calls the program "
        "under test (`replay_clients.bpf.c` for the affinity run also gives each frame the next of "
        f"{AFFINITY_CLIENTS} source ports, checksum kept valid).",
        "- **Systems.** *ceiling*: an XDP program that rewrites every datagram to one port "
        "(`fixed_port.bpf.c`). *spread*: unweighted round robin over the N ports with a per-CPU "
        "cursor (`spread.bpf.c`), the reference for a per-datagram spread. *ebpflb*: the shipped "
        "`ebpflb/bpf/ebpflb.bpf.o` loaded with ebpflb's own loader over a pin directory of the run, "
        "static gateways added with the control program (`CtlOp.ADD_STATIC`), weights as above; "
        "*--affinity* (client key, 3600 s); *reply NAT*: the object's tc program attached at egress "
        "of the injecting device (where the replies leave) as a tcx link, and the gateways echo "
        "every datagram to the client; a socket at the other end of the pair counts the replies, "
        "which arrive only if they are routed back. *nftables*: XDP_PASS under the harness, then "
        "the same stateless `numgen` rule in raw prerouting as above.",
        f"- **Weight changes.** ebpflb with {WEIGHT_CHANGE_GATEWAYS} static gateways (weights 1-4, "
        f"registered from 127.0.0.1 first so that their registrations may re-weight them); a thread on CPU "
        f"{options.gateway_cpu} gives one gateway after another a new weight (w, w+1 in turn) every "
        f"{INTERVAL_S * 1e3:g} ms, either as that gateway's registration datagram (from 127.0.0.1:port to "
        "the registration port, run through ebpflb's XDP program as arriving on lo: the default in-kernel "
        "path, where the packet path builds the new schedule in bounded steps, at most one build per "
        "jiffy) or through the control program as `ebpflb weights set` does (each change built in full "
        "before the call returns). Rounds interleave the run without changes and both.",
        f"- **Order and metrics.** Warm-up (one call, which must reach every gateway, then 1 s "
        f"discarded), then rounds, each measuring every system once for {options.seconds:g} s. "
        f"*delivered* = datagrams counted by the gateways (after a {DRAIN_S:g} s drain) / injection "
        "time; *loss* = 1 - delivered / frames injected; *CPU ns/dgram* = busy time of all CPUs "
        "(`/proc/stat`) / delivered. *delivered kpps* is the median of the normal points; */ceiling*, "
        "*/spread* (and the targets) are medians over rounds of ratios of points measured in the "
        "same round, normal points only.",
        "- **Pitfalls handled.** (1) Recycled pages keep the previous frame's rewrite: the replay "
        "harness (above), its cost the same for every system. (2) Each call creates and destroys a "
        "page pool and the destroy waits ~25 ms while pages sit in socket queues: "
        f"{FRAMES_PER_CALL} frames per call (10k per call gives ~0.3 Mpps). (3) Bimodal points: when "
        "the gateways free skbs on the other CPU, the injecting CPU periodically drains them in "
        "ksoftirqd and every system loses ~30 % for seconds; a point whose ksoftirqd on the injecting "
        f"CPU used more than {100 * KSOFTIRQD_LIMIT:g} % of the time (`/proc/<pid>/stat`; NET_RX counts "
        "from `/proc/softirqs` are in the raw points) is reported apart (column *ksoftirqd-mode "
        "points*) and left out of medians and ratios; SCHED_FIFO on the injector makes them rarer. "
        "(4) The device must be in the injector's namespace and the frame's destination MAC its own, "
        "or nothing is delivered; the warm-up checks that every gateway received. (5) Frames to an "
        "address that is not local would be forwarded (ebpflb leaves them alone): the destination is "
        "the namespace's own address. (6) Checksums are verified by the receiving stack, so a wrong "
        "rewrite shows as `InCsumErrors` and loss. (7) Other work on a shared machine: points with "
        f">= {100 * BACKGROUND_LIMIT:g} % background CPU are marked *disturbed* and left out.",
    ]


def write_panels(axes, results: list[NicResult]) -> None:
    """Three panels of the plot's second row: delivered rate and CPU per datagram per system
    and N, and every point's rate against its ksoftirqd share (the two modes)."""
    from report import style_bar_axes  # the caller's module: loaded, with matplotlib

    ok = [r for r in results if not r.error and r.saturation and not r.key.startswith(WEIGHT_CHANGE_KEY)]
    labels = list(dict.fromkeys(r.label for r in ok))
    counts = sorted({len(r.ports) for r in ok})
    width = 0.8 / max(1, len(counts))
    for index, n in enumerate(counts):
        by_label = {r.label: r for r in ok if len(r.ports) == n}
        xs = [i + index * width for i in range(len(labels))]
        rate = [sat(by_label[label], "delivered_pps") / 1e3 if label in by_label else 0 for label in labels]
        cpu = [sat(by_label[label], "cpu_ns_per_datagram") if label in by_label else 0 for label in labels]
        axes[0].bar(xs, rate, width, color=f"C{index}", label=f"N={n}")
        bars = axes[1].bar(xs, cpu, width, color=f"C{index}", label=f"N={n}")
        axes[1].bar_label(bars, fmt="%.0f", fontsize=7, rotation=90, padding=2)
    style_bar_axes(axes[:2], labels, width)
    axes[0].set_ylabel("delivered datagrams/s (thousands)")
    axes[0].set_title("NIC-like: delivered rate (median of normal points)")
    axes[1].set_ylabel("busy CPU ns per delivered datagram")
    axes[1].set_title("NIC-like: CPU per datagram (all CPUs)")
    axes[1].margins(y=0.12)
    for index, r in enumerate(r for r in results if not r.error):
        points = [p for p in r.points if isinstance(p, NicPoint)]
        axes[2].scatter([100 * p.ksoftirqd_share for p in points], [p.delivered_pps / 1e3 for p in points],
                        s=12, color=f"C{index % 10}", label=f"{r.label}, N={len(r.ports)}")
    axes[2].axvline(100 * KSOFTIRQD_LIMIT, color="grey", linestyle="--", linewidth=1)
    axes[2].set_xlabel("ksoftirqd share of the injecting CPU during the point (%)")
    axes[2].set_ylabel("delivered datagrams/s (thousands)")
    axes[2].set_title("NIC-like: every point (right of the line: reported apart)")
    axes[2].legend(fontsize=6)
    axes[2].grid(alpha=0.3)
