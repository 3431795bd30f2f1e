"""Summary table (text and markdown) and the plot."""
from __future__ import annotations

import math

from measure import ConfigResult


def build_table(results: list[ConfigResult]) -> list[dict]:
    rows = []
    for r in results:
        n = len(r.ports)
        ceiling = next((c for c in results if not c.balances and c.topology == r.topology
                        and len(c.ports) == n and not c.error), None)
        reference_key = "ebpflb-native-veth" if r.topology == "veth" else "ebpflb-skb-lo"
        reference = next((c for c in results if c.key == reference_key and len(c.ports) == n
                          and not c.error), None)
        rows.append({
            "system": r.label, "key": r.key, "n": n, "error": r.error,
            "zero_loss": zl(r), "saturation": sat(r, "delivered_pps"),
            "sat_range": sat_range(r),
            "sat_loss": sat(r, "loss"), "cpu_sat": sat(r, "cpu_ns_per_datagram"),
            "weight_err": r.weight_error_pp(),
            "disturbed": sum(p.disturbed for p in r.points), "points": len(r.points),
            "zl_vs_ceiling": ratio(zl(r), zl(ceiling)),
            "sat_vs_ceiling": paired_ratio(r, ceiling),
            "zl_vs_ebpflb": ratio(zl(r), zl(reference)),
            "sat_vs_ebpflb": paired_ratio(r, reference),
            "cpu_vs_ebpflb": ratio(sat(r, "cpu_ns_per_datagram"), sat(reference, "cpu_ns_per_datagram")),
        })
    return rows


def sat_range(r: ConfigResult) -> str:
    """Spread of the unpaced rounds (kpps), to show how noisy the machine was."""
    rates = [p.delivered_pps / 1e3 for p in r.clean([p for p in r.points if p.target_pps == 0])]
    return f"{min(rates):.0f}-{max(rates):.0f}" if rates and not r.error else "-"


def paired_ratio(r: ConfigResult, other: ConfigResult | None) -> float:
    """Median over rounds of the ratio of saturated delivered rates measured back to back."""
    if other is None or r.error:
        return math.nan
    pairs = list(zip([p for p in r.points if p.target_pps == 0],
                     [p for p in other.points if p.target_pps == 0]))
    clean = [(a, b) for a, b in pairs if not a.disturbed and not b.disturbed] or pairs
    ratios = sorted(a.delivered_pps / b.delivered_pps for a, b in clean if b.delivered_pps)
    return ratios[len(ratios) // 2] if ratios else math.nan


def zl(r: ConfigResult | None) -> float:
    if r is None or r.error:
        return math.nan
    return r.zero_loss.delivered_pps if r.zero_loss else 0.0


def sat(r: ConfigResult | None, attribute: str) -> float:
    if r is None or r.error or r.saturation is None:
        return math.nan
    return getattr(r.saturation, attribute)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


HEADERS = ["system", "N", "zero-loss kpps", "sat. kpps", "sat. range", "sat. loss %", "CPU ns/dgram",
           "weight err pp", "zero-loss/ceiling", "sat/ceiling", "zero-loss/ebpflb", "sat/ebpflb",
           "CPU/ebpflb", "disturbed"]


def cells(row: dict) -> list[str]:
    if row["error"]:
        return [row["system"], str(row["n"]), "failed: " + row["error"][:60]] + [""] * (len(HEADERS) - 3)

    def num(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    return [row["system"], str(row["n"]), num(row["zero_loss"] / 1e3, ".0f"),
            num(row["saturation"] / 1e3, ".0f"), row["sat_range"], num(100 * row["sat_loss"], ".2f"),
            num(row["cpu_sat"], ".0f"), num(row["weight_err"], ".3f"),
            num(row["zl_vs_ceiling"], ".3f"), num(row["sat_vs_ceiling"], ".3f"),
            num(row["zl_vs_ebpflb"], ".3f"), num(row["sat_vs_ebpflb"], ".3f"),
            num(row["cpu_vs_ebpflb"], ".2f"), f"{row['disturbed']}/{row['points']}"]


def format_text(table: list[dict]) -> str:
    return format_rows(HEADERS, [cells(row) for row in table])


def format_rows(headers: list[str], rows: list[list[str]]) -> str:
    """Aligned plain-text columns, the first left-aligned."""
    lines = [headers] + rows
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def target_checks(table: list[dict]) -> list[str]:
    """The issue's targets, per N: ebpflb >= 95 % of the ceiling at zero loss, and ahead of
    nftables and nginx on throughput and CPU per datagram."""
    lines = []
    for reference_key, others in (("ebpflb-native-veth", ("nftables", "nginx")), ("ebpflb-skb-lo", ())):
        for row in (r for r in table if r["key"] == reference_key and not r["error"]):
            n = row["n"]
            if math.isnan(row["zl_vs_ceiling"]):
                lines.append(f"{row['system']}, N={n}: no ceiling measured")
                continue
            verdict = "met" if row["zl_vs_ceiling"] >= 0.95 else "MISSED"
            lines.append(f"{row['system']}, N={n}: zero-loss {row['zl_vs_ceiling']:.3f} of the ceiling "
                         f"(saturated, paired: {row['sat_vs_ceiling']:.3f}); target >= 0.95 {verdict}")
            for other in (r for r in table if r["key"] in others and r["n"] == n and not r["error"]):
                faster = row["zero_loss"] > other["zero_loss"]
                cheaper = row["cpu_sat"] < other["cpu_sat"]
                lines.append(
                    f"{row['system']} vs {other['system']}, N={n}: throughput "
                    f"{'ahead' if faster else 'BEHIND'} ({row['zero_loss'] / 1e3:.0f} vs "
                    f"{other['zero_loss'] / 1e3:.0f} kpps zero-loss), CPU/dgram "
                    f"{'lower' if cheaper else 'NOT lower'} ({row['cpu_sat']:.0f} vs {other['cpu_sat']:.0f} ns)")
    return lines


def format_markdown(table: list[dict]) -> str:
    return markdown_rows(HEADERS, [cells(row) for row in table])


def markdown_rows(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)



def write_plot(results: list[ConfigResult], path: str, nic_results: list | None = None) -> None:
    """One row of panels per topology measured: socket sender, then NIC-like."""
    import matplotlib
    matplotlib.use("Agg")  # no display: render straight to PNG
    import matplotlib.pyplot as plt

    rows = [kind for kind, present in (("socket", results), ("nic", nic_results)) if present]
    figure, grid = plt.subplots(len(rows), 3, figsize=(18, 6 * len(rows)), squeeze=False)
    if "nic" in rows:
        import nic_report
        nic_report.write_panels(grid[rows.index("nic")], nic_results)
    if "socket" in rows:
        socket_panels(grid[0], results)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def style_bar_axes(axes, labels: list[str], width: float) -> None:
    """Grouped bars, one group per system label: ticks under the groups, legend, grid."""
    for axis in axes:
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        axis.legend(fontsize=8)
        axis.grid(axis="y", alpha=0.3)


def socket_panels(axes, results: list[ConfigResult]) -> None:
    ok = [r for r in results if not r.error and r.saturation]
    labels = list(dict.fromkeys(r.label for r in ok))
    counts = sorted({len(r.ports) for r in ok})
    width = 0.8 / max(1, len(counts))
    for index, n in enumerate(counts):
        by_label = {r.label: r for r in ok if len(r.ports) == n}
        xs = [i + index * width for i in range(len(labels))]
        zero_loss = [zl(by_label[label]) / 1e3 if label in by_label else 0 for label in labels]
        saturation = [sat(by_label[label], "delivered_pps") / 1e3 if label in by_label else 0 for label in labels]
        cpu = [sat(by_label[label], "cpu_ns_per_datagram") / 1e3 if label in by_label else 0 for label in labels]
        axes[0].bar(xs, saturation, width, color=f"C{index}", alpha=0.35,
                    label=f"N={n} saturation")
        axes[0].bar(xs, zero_loss, width, color=f"C{index}", label=f"N={n} zero loss (<0.1 %)")
        bars = axes[1].bar(xs, cpu, width, color=f"C{index}", label=f"N={n}")
        # Labels, since nginx's bar squeezes the kernel-path systems' differences.
        axes[1].bar_label(bars, fmt="%.2f", fontsize=7, rotation=90, padding=2)
    style_bar_axes(axes[:2], labels, width)
    axes[0].set_ylabel("delivered datagrams/s (thousands)")
    axes[0].set_title("Socket sender: throughput")
    axes[1].set_ylabel("busy CPU µs per delivered datagram (saturation)")
    axes[1].set_title("CPU per datagram (all CPUs, from /proc/stat)")
    axes[1].margins(y=0.12)  # room for the bar labels
    n_curve = counts[-1] if counts else 0
    for index, r in enumerate(r for r in ok if len(r.ports) == n_curve):
        points = sorted(r.points, key=lambda p: p.offered_pps)
        axes[2].plot([p.offered_pps / 1e3 for p in points], [p.delivered_pps / 1e3 for p in points],
                     marker="o", color=f"C{index}", label=r.label)
    axes[2].set_xlabel("offered datagrams/s (thousands)")
    axes[2].set_ylabel("delivered datagrams/s (thousands)")
    axes[2].set_title(f"Rate sweep, N={n_curve}")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)


def machine_description() -> list[str]:
    import os
    import platform
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_gib = int(meminfo.readline().split()[1]) / 2**20
    return [f"- kernel (`uname -r`): {platform.release()}",
            f"- CPU: {model}, `nproc` = {os.cpu_count()}",
            f"- memory: {mem_gib:.0f} GiB"]


def write_markdown(results: list[ConfigResult], table: list[dict], options, skipped: dict,
                   elapsed: float, path: str, nic_results: list | None = None,
                   nic_profiles: dict | None = None) -> None:
    import datetime

    lines = [
        "# End-to-end benchmark",
        "",
        "Generated by `make bench-e2e` (`python3 bench/e2e/run.py`) on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s. "
        "Numbers from one run; see *Caveats*. Two topologies: a *socket sender* in another "
        "namespace (every datagram crosses a veth pair from a `sendmmsg` socket), and a *NIC-like* "
        "one (frames injected into XDP on a device as a driver would, no sender socket).",
        "",
        "## Machine",
        "",
        *machine_description(),
        "",
    ]
    if results:
        lines += socket_section(results, table, options)
    if nic_results:
        lines += nic_section(nic_results, options, nic_profiles or {})
    if skipped:
        lines += ["Skipped:", ""] + [f"- {key}: {reason}" for key, reason in skipped.items()] + [""]
    lines += ["## Caveats", "", *CAVEATS, ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


def nic_section(nic_results: list, options, profiles: dict) -> list[str]:
    import nic_report
    lines = ["## NIC-like topology", "", "### Method", "", *nic_report.method_lines(options), "",
             "### Results", "", markdown_rows(nic_report.HEADERS, nic_report.table_rows(
                 nic_report.build_table(nic_results))), ""]
    changes = nic_report.change_rows(nic_results)
    if changes:
        lines += ["Weight changes:", "", markdown_rows(nic_report.CHANGE_HEADERS, changes), ""]
    lines += ["Targets (computed by the run):", "",
              *[f"- {line}" for line in nic_report.target_checks(nic_results)], "",
              "![both topologies: throughput and CPU per datagram](benchmarks.png)", ""]
    if profiles:
        columns = list(dict.fromkeys(c for shares in profiles.values() for c in shares))
        lines += ["### Where the injecting CPU's time goes", "",
                  f"perf call-graph profile of CPU {options.sender_cpu} (the injecting thread and its "
                  "ksoftirqd) during one extra point: inclusive % of its samples per kernel function, "
                  "self % for BPF programs.", "",
                  "| system | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
        for label, shares in profiles.items():
            lines.append(f"| {label} | " + " | ".join(
                f"{shares[c]:.1f}" if c in shares else "-" for c in columns) + " |")
        lines.append("")
    notes = [f"- {r.label}, N={len(r.ports)}: {note}" for r in nic_results for note in r.notes]
    if notes:
        lines += ["Notes from the run:", ""] + notes + [""]
    lines += ["### All points (NIC-like)", "",
              "| system | N | frames | delivered kpps | loss % | CPU ns/dgram | ksoftirqd % | NET_RX | "
              "FIFO | replies | changes | busy before/after % | RcvbufErrors | InCsumErrors |",
              "|" + "---|" * 14]
    for r in nic_results:
        for p in r.points:
            lines.append(f"| {r.label} | {len(r.ports)} | {p.sent} | {p.delivered_pps / 1e3:.1f} | "
                         f"{100 * p.loss:.3f} | {p.cpu_ns_per_datagram:.0f} | {100 * p.ksoftirqd_share:.1f} | "
                         f"{p.net_rx} | {'yes' if p.fifo else 'no'} | {p.replies} | {p.changes} | "
                         f"{100 * p.background:.0f}/{100 * p.background_after:.0f} | "
                         f"{p.udp_delta.get('RcvbufErrors', 0)} | {p.udp_delta.get('InCsumErrors', 0)} |")
    lines.append("")
    return lines


def socket_section(results: list[ConfigResult], table: list[dict], options) -> list[str]:
    from measure import BACKGROUND_LIMIT, DRAIN_S, LOSS_THRESHOLD, SATURATION_REPEATS, SWEEP_FRACTIONS
    lines = [
        "## Socket-sender topology",
        "",
        "### Method",
        "",
        "- **Topology.** `veth`: a sender namespace and a receiver namespace joined by a veth pair "
        "(10.199.0.1/30 - 10.199.0.2/30, static neighbours, TX checksum offload off on the sender "
        "so every datagram carries a full checksum that the receiver verifies; `InCsumErrors` is "
        "recorded). `lo`: sender and gateways in one namespace, traffic to 127.0.0.1. Every system "
        "gets namespaces of its own; all systems of one N are set up side by side.",
        f"- **Traffic.** A C sender (`sender.c`, `sendmmsg` batches of {options.batch} on a connected "
        f"socket) pinned to CPU {options.sender_cpu}, {options.payload}-byte payloads, "
        f"{options.seconds:g} s per point. Paced points sleep until each batch is due "
        "(`clock_nanosleep`, absolute deadlines), so pacing costs no CPU.",
        f"- **Gateways.** One C process (`gateway.c`) pinned to CPU {options.gateway_cpu} holds the N "
        "sockets (ports 4001..), each with a 16 MiB receive buffer, and drains them with `recvmmsg` "
        + (f"every {options.gateway_poll_us} us (timer-driven, so no wake-ups cross CPUs and batch "
           "sizes do not depend on wake-up timing)" if options.gateway_poll_us else "when `epoll` wakes it")
        + ", counting per port. For ebpflb it registers each socket itself (4-byte big-endian weight "
        "to 127.0.0.1:3000 from that socket, every 2 s). Gateways of the systems not being measured "
        "are stopped (SIGSTOP), so ebpflb is loaded with a long expiry.",
        "- **Weights.** N=3: 1,2,3. N=16: 1..8,8..1.",
        "- **Systems.** *no LB*: the sender addresses the first gateway port directly (the ceiling "
        "of its topology). *ebpflb*: `ebpflb load` on the receiver veth in XDP native mode (and in "
        "generic mode, for comparison), or on `lo` in generic mode. *nftables*: `udp dport 2152 "
        "notrack udp dport set numgen inc mod TOTAL map { 0-0 : p1, 1-2 : p2, ... }` in a prerouting "
        "filter chain at raw priority (stateless, no conntrack; its rule counter is checked against "
        "the datagrams sent). *nginx*: stream module, one worker, `upstream` with the same weights, "
        "`listen ... udp rcvbuf=16m`, `proxy_responses 0`.",
        "- **Order.** Each system is warmed up (0.5 s at 20 kpps, which must reach every gateway, "
        "then 1.5 s unpaced, discarded). Then rounds: each round measures every system once, "
        f"{SATURATION_REPEATS} unpaced rounds, then paced rounds at "
        f"{', '.join(f'{f:g}' for f in SWEEP_FRACTIONS)} x each system's median saturated delivered rate. "
        "Interleaving makes slow drifts of a shared VM hit all systems alike. Before each point "
        "the run waits (within a budget) for the machine to be idle; busy shares before/after each "
        "point are in the raw log.",
        "- **Metrics.** *delivered* = datagrams counted by the gateways (after a "
        f"{DRAIN_S:g} s drain) / sending time. *loss* = 1 - delivered / sent. *sat.* = the median of "
        f"the {SATURATION_REPEATS} unpaced runs. *zero-loss* = the highest delivered rate among the "
        f"paced points and the median unpaced point with loss < {100 * LOSS_THRESHOLD:g} %. "
        "*CPU ns/dgram* = non-idle CPU time of all CPUs (user+nice+system+irq+softirq+steal from "
        "`/proc/stat`) over the median unpaced point / datagrams delivered; it includes sender and "
        "gateways (the same for all systems). *weight err* = max over gateways of "
        "|share_i - w_i/sum(w)| in percentage points, at the zero-loss point. *x/ceiling* and "
        "*x/ebpflb*: zero-loss ratios, and *sat/...* = median over rounds of the ratio of saturated "
        "rates measured back to back. The ceiling is *no LB* of the same topology and N; the ebpflb "
        "reference is XDP native on veth for veth systems and generic on lo for lo. *disturbed*: "
        f"points around which other work kept >= {100 * BACKGROUND_LIMIT:g} % of the CPUs busy; "
        "they are left out of medians, zero-loss and pairs whenever undisturbed ones exist.",
        "",
        "### Results",
        "",
        format_markdown(table),
        "",
        "Targets (computed by the run):",
        "",
        *[f"- {line}" for line in target_checks(table)],
        "",
        "![throughput and CPU per datagram](benchmarks.png)",
        "",
    ]
    notes = [f"- {r.label}, N={len(r.ports)}: {note}" for r in results for note in r.notes]
    if notes:
        lines += ["Notes from the run:", ""] + notes + [""]
    profiled = [r for r in results if r.profile]
    if profiled:
        columns = list(dict.fromkeys(c for r in profiled for c in r.profile))
        lines += ["### Where the sender CPU's time goes", "",
                  f"perf call-graph profile of CPU {options.sender_cpu} (the sender and, on veth and lo, "
                  "the whole receive path in softirq) during one extra unpaced run, "
                  f"N={len(profiled[0].ports)}: inclusive % of that CPU's samples in the sender/ksoftirqd.",
                  "", "| system | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
        for r in profiled:
            lines.append(f"| {r.label} | " + " | ".join(
                f"{r.profile[c]:.1f}" if c in r.profile else "-" for c in columns) + " |")
        lines.append("")
    lines += ["### All points", "", "| system | N | target kpps | offered kpps | delivered kpps | loss % "
              "| CPU ns/dgram | steal % | busy before/after % | UDP RcvbufErrors | UDP InCsumErrors |",
              "|" + "---|" * 11]
    for r in results:
        for p in r.points:
            target = "unpaced" if p.target_pps == 0 else f"{p.target_pps / 1e3:.0f}"
            lines.append(f"| {r.label} | {len(r.ports)} | {target} | {p.offered_pps / 1e3:.1f} | "
                         f"{p.delivered_pps / 1e3:.1f} | {100 * p.loss:.3f} | {p.cpu_ns_per_datagram:.0f} | "
                         f"{100 * p.steal_ns / (p.busy_ns or 1):.1f} | "
                         f"{100 * p.background:.0f}/{100 * p.background_after:.0f} | "
                         f"{p.udp_delta.get('RcvbufErrors', 0)} | {p.udp_delta.get('InCsumErrors', 0)} |")
    lines.append("")
    return lines


CAVEATS = [
    "- Two vCPUs: on veth the sender's CPU also runs the receive path of the other namespace "
    "(softirq), so a system that costs more per datagram in the kernel slows its own sender and "
    "shows up as a lower delivered rate rather than as loss.",
    "- Native XDP on veth copies each locally sent packet into page-pool memory; generic XDP can be "
    "cheaper on veth. Neither predicts a physical NIC.",
    "- With more gateways the datagrams are interleaved, so each `recvmmsg` returns smaller batches; "
    "that costs gateway CPU whatever the balancer, and the no-LB ceiling (one socket) does not pay it.",
    "- On this VM the saturated rate of one and the same system varies by up to about +-20 % from "
    "round to round (column *sat. range*), more than the differences between the kernel-path "
    "systems; ratios under about 10 % apart are not significant. The profile table is steadier "
    "evidence of what each balancer adds to the datagram path.",
    "- CPU ns/dgram counts every busy CPU cycle of the machine, so it also catches other work on a "
    "shared machine; the *disturbed* column says how many points that may have touched.",
    "- NIC-like: the injecting CPU is always fully busy (it injects as fast as it can), so there "
    "CPU ns/dgram mostly mirrors the delivered rate; the gateways' CPU is the rest. The frames "
    "come from `BPF_PROG_TEST_RUN`, not a driver: no DMA, no interrupts, no GRO, one receive "
    "queue, so the absolute rates do not predict a physical NIC; the ratios between systems that "
    "share this path are the result.",
]
