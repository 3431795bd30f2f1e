"""Machine-wide busy CPU time from /proc/stat (the whole datapath runs in softirq, not in one process)."""
from __future__ import annotations

import os

TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def busy_ns() -> float:
    """Non-idle CPU time of all CPUs since boot: user+nice+system+irq+softirq+steal."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) * TICK_NS


def udp_counters(pid: int) -> dict[str, int]:
    """UDP MIB of the network namespace that process pid lives in."""
    with open(f"/proc/{pid}/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Udp:")]
    names, values = lines[0][1:], lines[1][1:]
    return dict(zip(names, map(int, values)))
