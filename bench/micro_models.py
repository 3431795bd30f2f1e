"""Exact reference models of the two rejected designs, to verify every datagram they handled.

Both are periodic from an empty state, so the count after any number of picks is cheap:
- lowest packets/weight: no gateway's packets/weight passes 1 before all reach 1, so after
  sum(w) picks every gateway has exactly its weight and the order starts over;
- smooth WRR: after sum(w)/gcd(w) picks every current weight is back at 0.
"""

from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Sequence


def nginx_order(weights: Sequence[int], picks: int) -> list[int]:
    """nginx's smooth WRR: each gains its weight, the largest (first on ties) pays back the total."""
    total = sum(weights)
    current = [0] * len(weights)
    order = []
    for _ in range(picks):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        order.append(best)
    return order


def lowest_ratio_counts(weights: Sequence[int], picks: int) -> list[int]:
    """Packets per gateway after `picks` datagrams, each to the lowest packets/weight (first on ties)."""
    total = sum(weights)
    counts = [(picks // total) * w for w in weights]
    partial = [0] * len(weights)
    for _ in range(picks % total):
        best = 0
        for i in range(1, len(weights)):
            if partial[i] * weights[best] < partial[best] * weights[i]:
                best = i
        partial[best] += 1
    return [c + p for c, p in zip(counts, partial)]


def smooth_wrr_counts(weights: Sequence[int], picks: int) -> list[int]:
    """Packets per gateway after `picks` steps of nginx's smooth WRR from all-zero state."""
    divisor = reduce(gcd, weights)
    cycle = sum(weights) // divisor
    order = nginx_order(weights, cycle)
    counts = [(picks // cycle) * (w // divisor) for w in weights]
    for slot in order[: picks % cycle]:
        counts[slot] += 1
    return counts
