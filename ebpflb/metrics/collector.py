"""The Prometheus metrics of one instance, read from its pins on every collection.

Names follow the Prometheus conventions: prefix `ebpflb_`, base units, `_total` on counters,
labels of low cardinality (a gateway's port; a reason). The exposition itself is
prometheus-client's."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Iterator, Optional

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ebpflb import __version__
from ebpflb.bpf.layout import FLOW_TABLE_SIZE, RejectReason
from ebpflb.dataplane import Instance, Snapshot
from ebpflb.dataplane.attach import Attachment
from ebpflb.dataplane.host import require_bpffs
from ebpflb.errors import EbpflbError

# (label value, GlobalCounters field): why a service datagram was passed or dropped unchanged
UNBALANCED_REASONS = (
    ("no_gateway_passed", "no_gateway_passed"),
    ("no_gateway_dropped", "no_gateway_dropped"),
    ("forwarded", "forwarded"),
    ("ipv6_no_checksum", "unbalanced"),
)

# (metric name without _total, GlobalCounters field, help)
PLAIN_COUNTERS = (
    ("ebpflb_service_datagrams", "service", "Service datagrams sent to a gateway."),
    ("ebpflb_registrations_accepted", "reg_accepted", "Registrations and heartbeats applied."),
    ("ebpflb_gateways_expired", "expired", "Registered gateways removed after missing heartbeats."),
    ("ebpflb_gateways_found_dead", "found_dead", "Gateways found without a bound socket (removed or marked down)."),
    ("ebpflb_schedule_rebuilds", "rebuilds", "Schedules published after a change of the gateway table."),
    ("ebpflb_stale_picks", "stale_picks", "Service datagrams whose schedule entry had left, sent to a live gateway."),
    ("ebpflb_replies_nat", "replies_nat", "Replies from a gateway's port given the service port (reply NAT)."),
    ("ebpflb_registrations_in_kernel", "reg_in_kernel", "With -u, registrations taken by the kernel (no listener)."),
    ("ebpflb_flows_created", "flows_created", "Flows created (--affinity)."),
    ("ebpflb_flows_expired", "flows_expired", "Flows not seen for the affinity time, chosen anew (--affinity)."),
    ("ebpflb_flows_moved", "flows_moved", "Flows whose gateway left or died, moved to a live one (--affinity)."),
)


def snapshot_families(snap: Snapshot, attachments: list[Attachment], now: Optional[float] = None) -> list[Metric]:
    """The metric families of one snapshot; `now` is the wall-clock time it was taken."""
    now = time.time() if now is None else now
    c = snap.counters
    families: list[Metric] = []

    per_gateway = (  # (family, its value for a gateway)
        (
            CounterMetricFamily("ebpflb_gateway_packets", "Service datagrams sent to the gateway.", labels=["port"]),
            lambda g: g.packets,
        ),
        (
            CounterMetricFamily(
                "ebpflb_gateway_bytes", "UDP bytes (header and payload) sent to the gateway.", labels=["port"]
            ),
            lambda g: g.bytes,
        ),
        (GaugeMetricFamily("ebpflb_gateway_weight", "The gateway's weight.", labels=["port"]), lambda g: g.weight),
        (
            GaugeMetricFamily(
                "ebpflb_gateway_up",
                "1 if a UDP socket was bound on the gateway's port when last checked.",
                labels=["port"],
            ),
            lambda g: int(g.up),
        ),
        (
            GaugeMetricFamily(
                "ebpflb_gateway_static", "1 for a gateway added by hand (it never expires).", labels=["port"]
            ),
            lambda g: int(g.is_static),
        ),
        (
            GaugeMetricFamily(
                "ebpflb_gateway_last_registration_timestamp_seconds",
                "Unix time of the gateway's last registration or heartbeat (a static one's: when it was added).",
                labels=["port"],
            ),
            lambda g: round(now - g.age_s, 3),
        ),
    )
    gateways = sorted(snap.gateways, key=lambda g: g.port)
    for family, value_of in per_gateway:
        for g in gateways:
            family.add_metric([str(g.port)], value_of(g))
        families.append(family)
    families.append(GaugeMetricFamily("ebpflb_gateways", "Gateways in the table.", value=len(snap.gateways)))
    families.append(
        CounterMetricFamily(
            "ebpflb_departed_gateways_packets",
            "Datagrams sent to gateways no longer in the table (with the gateways' sum, a total that never decreases).",
            value=snap.departed_packets,
        )
    )
    families.append(
        CounterMetricFamily(
            "ebpflb_departed_gateways_bytes",
            "UDP bytes sent to gateways no longer in the table.",
            value=snap.departed_bytes,
        )
    )

    for name, field, text in PLAIN_COUNTERS:
        families.append(CounterMetricFamily(name, text, value=getattr(c, field)))
    unbalanced = CounterMetricFamily(
        "ebpflb_unbalanced_datagrams", "Service datagrams not sent to a gateway, by reason.", labels=["reason"]
    )
    for reason, field in UNBALANCED_REASONS:
        unbalanced.add_metric([reason], getattr(c, field))
    families.append(unbalanced)
    rejected = CounterMetricFamily(
        "ebpflb_registrations_rejected", "Registrations refused, by reason.", labels=["reason"]
    )
    for r in RejectReason:
        rejected.add_metric([r.name.lower()], c.reg_rejected[r])
    families.append(rejected)
    families.append(
        CounterMetricFamily(
            "ebpflb_flow_table_full",
            "Flows created while the flow table was full, each evicting the least recent (--affinity).",
            value=max(0, c.flows_created - FLOW_TABLE_SIZE),
        )
    )
    families.append(GaugeMetricFamily("ebpflb_flow_table_size", "Flows the table holds.", value=FLOW_TABLE_SIZE))

    attached = GaugeMetricFamily(
        "ebpflb_interface_attached",
        "1 for each interface the XDP program is attached to.",
        labels=["interface", "mode"],
    )
    for a in attachments:
        attached.add_metric([a.ifname, a.mode], 1)
    families.append(attached)
    return families


class InstanceCollector(Collector):
    """Reads the instance at pin_path on every collection (every scrape of the exporter).
    Without one, only `ebpflb_up 0` and the build info are given: the exporter keeps serving
    while ebpflb is not loaded (a restart), and says so."""

    def __init__(self, pin_path: str, report: Optional[Callable[[str], None]] = None) -> None:
        self.pin_path = pin_path
        self.last_error: Optional[str] = None
        self._report = report  # hears each new reason the instance cannot be read once, not every scrape
        self._lock = threading.Lock()  # the exporter's server collects on a thread per scrape

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("ebpflb_build_info", "ebpflb's version; the value is 1.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        try:
            require_bpffs(self.pin_path)  # without it, say so rather than "nothing is loaded"
            instance = Instance(self.pin_path)
            instance.check_netns()
            snap = instance.snapshot()  # expires stale gateways first, as `gateways` does
            families: Iterable[Metric] = snapshot_families(snap, instance.attachments())
        except EbpflbError as e:
            families = ()
            error: Optional[str] = str(e)
        else:
            error = None
        self._note(error)
        yield GaugeMetricFamily(
            "ebpflb_up",
            "1 if an instance is loaded at the pin path and its state could be read.",
            value=0 if error else 1,
        )
        yield from families

    def _note(self, error: Optional[str]) -> None:
        with self._lock:
            if error != self.last_error and self._report:
                self._report(f"cannot read the instance: {error}" if error else "the instance is readable again")
            self.last_error = error


def registry_for(
    pin_path: str, report: Optional[Callable[[str], None]] = None
) -> tuple[CollectorRegistry, InstanceCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = InstanceCollector(pin_path, report)
    registry.register(collector)
    return registry, collector


def exposition(pin_path: str) -> tuple[str, Optional[str]]:
    """The text exposition of the instance at pin_path, and the error that kept it from being read."""
    registry, collector = registry_for(pin_path)
    return generate_latest(registry).decode(), collector.last_error
