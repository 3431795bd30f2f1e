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
        reference = next((c for c in results if c.key.startswith("ebpflb") and c.topology == r.topology
                          and len(c.ports) == n and not c.error
                          and (c.key.startswith("ebpflb-native") or r.topology == "lo")), None)
        rows.append({
            "system": r.label, "key": r.key, "n": n, "error": r.error,
            "zero_loss": zl(r), "saturation": sat(r, "delivered_pps"),
            "sat_loss": sat(r, "loss"), "cpu_sat": sat(r, "cpu_ns_per_datagram"),
            "cpu_zero_loss": r.zero_loss.cpu_ns_per_datagram if r.zero_loss else math.nan,
            "weight_err": r.weight_error_pp(),
            "zl_vs_ceiling": ratio(zl(r), zl(ceiling)),
            "zl_vs_ebpflb": ratio(zl(r), zl(reference)),
            "cpu_vs_ebpflb": ratio(sat(r, "cpu_ns_per_datagram"), sat(reference, "cpu_ns_per_datagram")),
        })
    return rows


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


HEADERS = ["system", "N", "zero-loss kpps", "sat. kpps", "sat. loss %", "CPU ns/dgram (sat)",
           "CPU ns/dgram (zero-loss)", "weight err pp", "zero-loss / ceiling", "zero-loss / ebpflb",
           "CPU / ebpflb"]


def cells(row: dict) -> list[str]:
    if row["error"]:
        return [row["system"], str(row["n"]), "failed: " + row["error"][:60]] + [""] * (len(HEADERS) - 3)

    def num(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    return [row["system"], str(row["n"]), num(row["zero_loss"] / 1e3, ".0f"),
            num(row["saturation"] / 1e3, ".0f"), num(100 * row["sat_loss"], ".2f"),
            num(row["cpu_sat"], ".0f"), num(row["cpu_zero_loss"], ".0f"), num(row["weight_err"], ".3f"),
            num(row["zl_vs_ceiling"], ".3f"), num(row["zl_vs_ebpflb"], ".3f"),
            num(row["cpu_vs_ebpflb"], ".2f")]


def format_text(table: list[dict]) -> str:
    lines = [HEADERS] + [cells(row) for row in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_markdown(table: list[dict]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(cells(row)) + " |" for row in table]
    return "\n".join(out)


def write_plot(results, path):  # filled in below
    raise NotImplementedError


def write_markdown(results, table, options, skipped, elapsed, path):
    raise NotImplementedError
