"""Pure-Python reference model of the kernel's scheduler (kernel/scheduler.bpf.h).

Smooth weighted round-robin as nginx does it: every gateway gains its weight, the one with
the largest current weight (the first on ties, in slot order) is picked and pays back the
total. The kernel precomputes one cycle, sum(weights) / gcd(weights) picks long, capped at
SCHED_SIZE, and steps a per-CPU cursor through it, restarting when the schedule changes.
"""

from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Sequence

from .layout import SCHED_SIZE


def cycle_length(weights: Sequence[int], sched_size: int = SCHED_SIZE) -> int:
    live = [w for w in weights if w > 0]
    if not live:
        return 0
    return min(sum(live) // reduce(gcd, live), sched_size)


def schedule(weights: Sequence[int], sched_size: int = SCHED_SIZE) -> list[int]:
    """Indexes into `weights` (slot order) of one schedule cycle; weight 0 is never picked."""
    live = [i for i, w in enumerate(weights) if w > 0]
    total = sum(weights[i] for i in live)
    current = {i: 0 for i in live}
    picks = []
    for _ in range(cycle_length(weights, sched_size)):
        best = live[0]
        for i in live:
            current[i] += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= total
        picks.append(best)
    return picks


def sequence(weights: Sequence[int], count: int, sched_size: int = SCHED_SIZE) -> list[int]:
    """The first `count` picks on one CPU after the schedule was (re)built."""
    cycle = schedule(weights, sched_size)
    if not cycle:
        return []
    return [cycle[k % len(cycle)] for k in range(count)]
