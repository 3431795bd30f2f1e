"""One measured point (send for a fixed time, count what each gateway got) and a rate sweep."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cpu
from balancers import Balancer, Context
from programs import Gateways, run_sender

# "Zero loss" = loss below this fraction of the datagrams sent (0.1 %).
LOSS_THRESHOLD = 0.001
# Paced rates, as fractions of the delivered rate at saturation (unpaced) of the same system.
SWEEP_FRACTIONS = (0.5, 0.75, 0.9, 1.0)
# Time for gateways to empty their socket buffers after the sender stopped.
DRAIN_S = 0.3
# Unpaced runs per configuration; the median (by delivered rate) is "saturation".
SATURATION_REPEATS = 5
# A point is redone (at most this often) when other work kept the CPUs busy right after it.
MAX_RETRIES = 1
BACKGROUND_LIMIT = 0.15
# Total seconds a run may spend waiting for a shared machine to go quiet (keeps it < 10 min).
QUIET_WAIT_BUDGET_S = [60.0]


@dataclass
class Options:
    seconds: float = 3.0
    payload: int = 32
    sender_cpu: int = 0
    gateway_cpu: int = 1
    batch: int = 32
    # Gateways drain their sockets every poll_us (0: epoll wake-ups instead).
    gateway_poll_us: int = 1000


@dataclass
class Point:
    target_pps: float  # 0 = unpaced
    sent: int
    send_seconds: float
    per_port: dict[int, int]
    busy_ns: float
    udp_delta: dict[str, int]
    background: float = 0.0  # busy CPU share just before the point (others' load on a shared machine)
    background_after: float = 0.0  # the same, right after the gateways drained
    steal_ns: float = 0.0  # hypervisor steal during the point (a slower host shows here, if at all)

    @property
    def disturbed(self) -> bool:
        """Other work kept the CPUs busy around this point (the machine may be shared)."""
        return max(self.background, self.background_after) >= BACKGROUND_LIMIT

    @property
    def delivered(self) -> int:
        return sum(self.per_port.values())

    @property
    def offered_pps(self) -> float:
        return self.sent / self.send_seconds

    @property
    def delivered_pps(self) -> float:
        return self.delivered / self.send_seconds

    @property
    def loss(self) -> float:
        return max(0.0, 1 - self.delivered / self.sent) if self.sent else 1.0

    @property
    def cpu_ns_per_datagram(self) -> float:
        return self.busy_ns / self.delivered if self.delivered else float("nan")

    def weight_error_pp(self, ports: list[int], weights: list[int]) -> float:
        """max |share_i - weight_i / sum(weights)| over gateways, in percentage points."""
        if not self.delivered:
            return float("nan")
        total_weight = sum(weights)
        return 100 * max(abs(self.per_port.get(p, 0) / self.delivered - w / total_weight)
                         for p, w in zip(ports, weights))

    def as_dict(self) -> dict:
        return {"target_pps": self.target_pps, "sent": self.sent, "send_seconds": self.send_seconds,
                "delivered": self.delivered, "per_port": self.per_port, "busy_ns": self.busy_ns,
                "offered_pps": self.offered_pps, "delivered_pps": self.delivered_pps,
                "loss": self.loss, "cpu_ns_per_datagram": self.cpu_ns_per_datagram,
                "udp_delta": self.udp_delta, "background": self.background,
                "background_after": self.background_after,
                "steal_ns": self.steal_ns}


def measure_point(ctx: Context, balancer: Balancer, gateways: Gateways, sender: str,
                  rate: float, seconds: float, options: Options, around_send=None) -> Point:
    """Measure once; redo if the machine was busy with something else right after it.
    around_send: optional (start, stop) callables run right before and after the sender."""
    for _attempt in range(MAX_RETRIES + 1):
        point = measure_once(ctx, balancer, gateways, sender, rate, seconds, options, around_send)
        if point.background_after < BACKGROUND_LIMIT or QUIET_WAIT_BUDGET_S[0] <= 0:
            break
    return point


def measure_once(ctx: Context, balancer: Balancer, gateways: Gateways, sender: str,
                 rate: float, seconds: float, options: Options, around_send=None) -> Point:
    dst, port = balancer.destination(ctx)
    waited_from = time.time()
    background = cpu.wait_for_quiet(max_wait_s=min(5.0, QUIET_WAIT_BUDGET_S[0]))
    QUIET_WAIT_BUDGET_S[0] = max(0.0, QUIET_WAIT_BUDGET_S[0] - (time.time() - waited_from))
    before = gateways.counts()
    udp_before = cpu.udp_counters(gateways.pid)
    busy_before, steal_before = cpu.busy_ns(), cpu.steal_ns()
    if around_send:
        around_send[0]()
    try:
        result = run_sender(sender, ctx.sender_ns, dst, port, rate, seconds, options.payload,
                            options.sender_cpu, options.batch)
    finally:
        if around_send:
            around_send[1]()
    time.sleep(DRAIN_S)
    busy_after, steal_after = cpu.busy_ns(), cpu.steal_ns()
    after = gateways.counts()
    udp_after = cpu.udp_counters(gateways.pid)
    keys = ("InErrors", "RcvbufErrors", "InCsumErrors", "NoPorts")
    return Point(
        target_pps=rate, sent=result.sent, send_seconds=result.elapsed_s,
        per_port={p: after[p] - before[p] for p in after},
        busy_ns=busy_after - busy_before,
        udp_delta={k: udp_after.get(k, 0) - udp_before.get(k, 0) for k in keys},
        background=background,
        steal_ns=steal_after - steal_before,
        background_after=cpu.busy_fraction(0.2),
    )


@dataclass
class ConfigResult:
    """All points of one system with N gateways, plus what was noticed on the way."""

    key: str
    label: str
    topology: str
    balances: bool
    ports: list[int]
    weights: list[int]
    points: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    # Inclusive % of the sender CPU's samples per kernel function (perf), when profiled.
    profile: dict[str, float] = field(default_factory=dict)

    def clean(self, points: list[Point]) -> list[Point]:
        """The undisturbed points, or all of them if every one was disturbed."""
        undisturbed = [p for p in points if not p.disturbed]
        return undisturbed or points

    @property
    def saturation(self) -> Point | None:
        """Median unpaced run by delivered rate (undisturbed runs only, when there are any)."""
        unpaced = sorted(self.clean([p for p in self.points if p.target_pps == 0]),
                         key=lambda p: p.delivered_pps)
        return unpaced[len(unpaced) // 2] if unpaced else None

    @property
    def zero_loss(self) -> Point | None:
        """Highest delivered rate with loss < LOSS_THRESHOLD among the paced points and the
        median unpaced one (not the best unpaced repeat, which would favour noisy systems)."""
        candidates = self.clean([p for p in self.points if p.target_pps > 0]) + [self.saturation]
        good = [p for p in candidates if p and p.loss < LOSS_THRESHOLD and p.delivered]
        return max(good, key=lambda p: p.delivered_pps) if good else None

    def weight_error_pp(self) -> float:
        point = self.zero_loss or self.saturation
        if point is None or not self.balances:
            return float("nan")
        return point.weight_error_pp(self.ports, self.weights)

    @classmethod
    def from_dict(cls, data: dict) -> "ConfigResult":
        point_fields = ("target_pps", "sent", "send_seconds", "busy_ns", "udp_delta", "background",
                        "background_after", "steal_ns")
        points = [Point(per_port={int(k): v for k, v in p["per_port"].items()},
                        **{f: p[f] for f in point_fields if f in p}) for p in data["points"]]
        return cls(data["key"], data["label"], data["topology"], data["balances"], data["ports"],
                   data["weights"], points, data["notes"], data["error"], data.get("profile", {}))

    def as_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "topology": self.topology,
                "balances": self.balances, "ports": self.ports, "weights": self.weights,
                "points": [p.as_dict() for p in self.points], "notes": self.notes,
                "error": self.error, "profile": self.profile}
