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


def steal_ns() -> float:
    """CPU time the hypervisor gave to others while this VM wanted to run (all CPUs)."""
    with open("/proc/stat") as stat:
        return int(stat.readline().split()[8]) * TICK_NS


def udp_counters(pid: int) -> dict[str, int]:
    """UDP MIB of the network namespace that process pid lives in."""
    with open(f"/proc/{pid}/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Udp:")]
    names, values = lines[0][1:], lines[1][1:]
    return dict(zip(names, map(int, values)))


def busy_fraction(window_s: float) -> float:
    """Share of all CPUs' time that was busy during a short window."""
    import time
    total_before, busy_before = _total_and_busy()
    time.sleep(window_s)
    total_after, busy_after = _total_and_busy()
    return (busy_after - busy_before) / max(1, total_after - total_before)


def _total_and_busy() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values), sum(values) - idle


def wait_for_quiet(threshold: float = 0.08, window_s: float = 0.2, max_wait_s: float = 5) -> float:
    """The machine may be shared: wait until others' CPU use is low, return the last busy share."""
    import time
    deadline = time.time() + max_wait_s
    while True:
        busy = busy_fraction(window_s)
        if busy < threshold or time.time() > deadline:
            return busy
