"""Pure-Python reference model of the kernel's scheduler (kernel/scheduler.bpf.h).

The order: one cycle of L = sum(w) / gcd(w) positions gives gateway i exactly c_i = w_i / gcd
picks, and in every prefix of k positions its count is within 1 of k * c_i / L. Pick j of
gateway i (1-based) may not come before position ceil((j-1) L / c_i) (1-based) and is due by
floor(j L / c_i) + 1; earliest-deadline-first meets every such window. A cycle longer than
SCHED_SIZE is cut at SCHED_SIZE positions (c_i = w_i, L = sum(w)). A short cycle is repeated
to fill at least half of SCHED_SIZE, so that a cursor keeps its phase when the length changes.

Each CPU keeps its cursor across publications; when the schedule's length changes the cursor
moves to the same phase of the new one (`adopt`). A CPU's first cursor is `start_offset(cpu)`.
The model follows the kernel's data structures exactly (LIFO deadline and release lists, ties
in slot order), so the kernel can be compared with it datagram for datagram.
"""

from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Sequence

from ebpflb.bpf.layout import SCHED_SIZE

GOLDEN = 0x9E3779B9  # kernel/scheduler.bpf.h adopt_schedule(): spreads the CPUs' first cursors


def cycle_length(weights: Sequence[int], sched_size: int = SCHED_SIZE) -> int:
    """Positions of one cycle: sum / gcd of the live weights, capped at sched_size."""
    live = [w for w in weights if w > 0]
    if not live:
        return 0
    return min(sum(live) // reduce(gcd, live), sched_size)


def cycle(weights: Sequence[int], sched_size: int = SCHED_SIZE) -> list[int]:
    """Indexes into `weights` (slot order) of one cycle; weight 0 is never picked."""
    live = [i for i, w in enumerate(weights) if w > 0]
    if not live:
        return []
    total = sum(weights[i] for i in live)
    divisor = reduce(gcd, (weights[i] for i in live))
    if total // divisor <= sched_size:
        length = span = total // divisor
        picks_per_cycle = {i: weights[i] // divisor for i in live}
    else:
        length, span = sched_size, total
        picks_per_cycle = {i: weights[i] for i in live}

    deadline: dict[int, list[int]] = {}  # position -> items due by it (a stack, as in the kernel)
    release: dict[int, list[int]] = {}  # position -> items whose next pick may start there
    due: dict[int, tuple[int, int]] = {}  # item -> (picks + 1) * span / weight, quotient and remainder

    def next_due(item: int) -> int:
        return min(due[item][0], length)  # `length`: the late list, taken when nothing is due

    for item in reversed(live):  # reversed, so equal deadlines pop in slot order
        due[item] = divmod(span, picks_per_cycle[item])
        deadline.setdefault(next_due(item), []).append(item)
    picks = dict.fromkeys(live, 0)
    order = []
    for pos in range(length):
        for item in reversed(release.pop(pos, [])):
            deadline.setdefault(next_due(item), []).append(item)
        first = min(deadline)
        item = deadline[first].pop()
        if not deadline[first]:
            del deadline[first]
        order.append(item)
        picks[item] += 1
        weight = picks_per_cycle[item]
        if picks[item] >= weight:
            continue
        q, r = due[item]
        starts = q + (1 if r else 0) - 1  # ceil(picks * span / weight), 0-based
        r += span % weight
        q += span // weight + (1 if r >= weight else 0)
        due[item] = (q, r - weight if r >= weight else r)
        if starts <= pos + 1:
            deadline.setdefault(next_due(item), []).append(item)
        elif starts < length:
            release.setdefault(starts, []).append(item)
    return order


def schedule(weights: Sequence[int], sched_size: int = SCHED_SIZE) -> list[int]:
    """The published schedule: whole cycles filling at least half of sched_size."""
    one = cycle(weights, sched_size)
    if not one:
        return []
    return one * (sched_size // len(one))


def start_offset(cpu: int, length: int) -> int:
    """Where a CPU's cursor starts in its first schedule."""
    return (((cpu * GOLDEN) & 0xFFFFFFFF) >> 20) % length if length else 0


def adopt(cursor: int, old_length: int, new_length: int) -> int:
    """The cursor in a newly published schedule: the same phase of the cycle."""
    return cursor * new_length // old_length if new_length else 0


class Cpu:
    """One CPU's cursor across publications, as the kernel steps it."""

    def __init__(self, cpu: int = 0) -> None:
        self.cpu = cpu
        self.cursor = 0
        self.length = 0
        self.order: list[int] = []

    def publish(self, weights: Sequence[int], sched_size: int = SCHED_SIZE) -> None:
        order = schedule(weights, sched_size)
        if self.length:
            self.cursor = adopt(self.cursor, self.length, len(order))
        else:
            self.cursor = start_offset(self.cpu, len(order))
        self.order, self.length = order, len(order)

    def take(self, count: int) -> list[int]:
        if not self.order:
            return []
        out = []
        for _ in range(count):
            out.append(self.order[self.cursor])
            self.cursor = (self.cursor + 1) % self.length
        return out


def sequence(weights: Sequence[int], count: int, cpu: int = 0, sched_size: int = SCHED_SIZE) -> list[int]:
    """The first `count` picks of a CPU whose first schedule is this one."""
    model = Cpu(cpu)
    model.publish(weights, sched_size)
    return model.take(count)
