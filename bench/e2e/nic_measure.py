"""One point of the NIC-like topology (frames injected for a fixed time, counted per gateway)
and the results of one system: as measure.py's, plus how the injecting CPU ran the point.
Points in ksoftirqd mode are kept apart from the medians (see live_frames.py)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from live_frames import in_ksoftirqd_mode
from measure import ConfigResult, Point


@dataclass
class NicPoint(Point):
    ksoftirqd_ns: float = 0.0  # CPU time of ksoftirqd on the injecting CPU during the injection
    net_rx: int = 0  # NET_RX softirqs on the injecting CPU
    fifo: bool = False  # the injector ran under SCHED_FIFO
    replies: int = 0  # datagrams the client received back (echoing gateways)
    changes: int = 0  # weight changes made during the point
    counters: dict[str, int] = field(default_factory=dict)  # the system's own counters, deltas

    @property
    def ksoftirqd_share(self) -> float:
        return self.ksoftirqd_ns / (self.send_seconds * 1e9) if self.send_seconds else 0.0

    @property
    def ksoftirqd_mode(self) -> bool:
        return in_ksoftirqd_mode(self.ksoftirqd_ns, self.send_seconds)

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.delivered)

    def as_dict(self) -> dict:
        extra = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _POINT_FIELDS}
        return {**super().as_dict(), **extra, "ksoftirqd_share": self.ksoftirqd_share}

    @classmethod
    def from_dict(cls, data: dict) -> "NicPoint":
        names = {f.name for f in fields(cls)} - {"per_port"}
        return cls(per_port={int(k): v for k, v in data["per_port"].items()},
                   **{k: v for k, v in data.items() if k in names})


_POINT_FIELDS = {f.name for f in fields(Point)}


@dataclass
class NicResult(ConfigResult):
    def normal(self) -> list[NicPoint]:
        """Undisturbed points that did not run in ksoftirqd mode (or all, if none is)."""
        points = [p for p in self.points if isinstance(p, NicPoint) and not p.ksoftirqd_mode]
        return self.clean(points) or self.clean(self.points)

    def ksoftirqd_points(self) -> list[NicPoint]:
        return [p for p in self.points if isinstance(p, NicPoint) and p.ksoftirqd_mode]

    @property
    def saturation(self) -> Point | None:
        """Median normal point by delivered rate."""
        ordered = sorted(self.normal(), key=lambda p: p.delivered_pps)
        return ordered[len(ordered) // 2] if ordered else None

    @classmethod
    def from_dict(cls, data: dict) -> "NicResult":
        base = ConfigResult.from_dict({**data, "points": []})
        result = cls(**{f.name: getattr(base, f.name) for f in fields(ConfigResult)})
        result.points = [NicPoint.from_dict(p) for p in data["points"]]
        return result
