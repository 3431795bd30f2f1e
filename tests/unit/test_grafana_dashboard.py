"""contrib/grafana/ebpflb.json against the metrics ebpflb actually exports.

The dashboard is plain JSON that nothing else loads, so a renamed metric would leave a panel
silently empty. Here every metric name in every query must be a sample the collector gives
(collected from a fake snapshot, no kernel), every counter must be read through rate() or
increase(), and every selector must be filtered by the $instance variable.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.core import CounterMetricFamily

from ebpflb.bpf.layout import GlobalCounters, LbState
from ebpflb.dataplane.attach import Attachment
from ebpflb.dataplane.state import GatewayInfo, Snapshot
from ebpflb.metrics import collector

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib" / "grafana" / "ebpflb.json"
METRIC = re.compile(r"\bebpflb_[a-z_]+")
SELECTOR = re.compile(r"\{([^}]*)\}")
INSTANCE_FILTER = 'instance=~"$instance"'
RATE_FUNCTIONS = ("rate", "increase")


def fake_snapshot() -> Snapshot:
    return Snapshot(
        state=LbState(),
        counters=GlobalCounters(),
        gateways=[
            GatewayInfo(slot=0, port=9001, weight=1, is_static=False, age_s=1.5, packets=10, bytes=800),
            GatewayInfo(slot=1, port=9002, weight=3, is_static=True, age_s=60.0, packets=30, bytes=2400, up=False),
        ],
        departed_packets=5,
        departed_bytes=400,
    )


class FakeInstance:
    """Stands for a loaded instance: what InstanceCollector reads, without pins or a kernel."""

    def __init__(self, pin_path: str) -> None:
        self.pin_path = pin_path

    def check_netns(self) -> None:
        pass

    def snapshot(self) -> Snapshot:
        return fake_snapshot()

    def attachments(self) -> list[Attachment]:
        return [Attachment(ifname="eth0", ifindex=2, mode="native")]


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], set[str]]:
    """(every sample name the collector gives, the names of those that are counters)."""
    monkeypatch.setattr(collector, "Instance", FakeInstance)
    monkeypatch.setattr(collector, "require_bpffs", lambda pin_path: None)  # no bpffs needed either
    families = list(collector.InstanceCollector("/nonexistent/ebpflb").collect())
    # the same families as snapshot_families gives directly, plus ebpflb_up and ebpflb_build_info
    direct = collector.snapshot_families(fake_snapshot(), FakeInstance("").attachments(), now=1_700_000_000.0)
    assert {f.name for f in direct} <= {f.name for f in families}
    assert {"ebpflb_up", "ebpflb_build_info"} <= {f.name for f in families}
    names: set[str] = set()
    counters: set[str] = set()
    for family in families:
        samples = {s.name for s in family.samples}
        assert samples, f"{family.name} gave no sample: the fake snapshot should exercise every family"
        names |= samples
        if isinstance(family, CounterMetricFamily):
            counters |= samples
    assert "ebpflb_service_datagrams_total" in counters  # counters are exposed with _total
    return names, counters


@lru_cache(maxsize=1)
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, with those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard()["panels"]) if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query."""
    return [(p["title"], t["expr"]) for p in query_panels() for t in p["targets"]]


def enclosing_functions(expr: str, pos: int) -> list[str]:
    """The names of the function calls whose parentheses enclose expr[pos] (innermost last)."""
    stack: list[str] = []
    for i, ch in enumerate(expr[:pos]):
        if ch == "(":
            name = re.search(r"([A-Za-z_]\w*)\s*$", expr[:i])
            stack.append(name.group(1) if name else "")
        elif ch == ")" and stack:
            stack.pop()
    return stack


def test_dashboard_is_grafana_json() -> None:
    d = dashboard()
    assert d["title"]
    assert d["uid"] and len(d["uid"]) <= 40
    assert d["schemaVersion"] >= 36
    assert d["panels"]
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]


def test_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["definition"] == "label_values(ebpflb_up, instance)"


def test_panels_have_unique_ids_and_queries() -> None:
    ids = [p["id"] for p in all_panels(dashboard()["panels"])]
    assert len(ids) == len(set(ids))
    for panel in query_panels():
        assert panel["title"], panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard()["panels"]):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_metric_is_exported(exported: tuple[set[str], set[str]]) -> None:
    names, _ = exported
    used = {m for _, expr in exprs() for m in METRIC.findall(expr)}
    assert used, "the dashboard queries no ebpflb metric"
    assert used <= names, f"the dashboard queries metrics ebpflb does not export: {sorted(used - names)}"


def test_counters_are_read_through_rate(exported: tuple[set[str], set[str]]) -> None:
    _, counters = exported
    for title, expr in exprs():
        for m in METRIC.finditer(expr):
            if m.group() in counters:
                calls = enclosing_functions(expr, m.start())
                assert any(f in RATE_FUNCTIONS for f in calls), f"{title!r}: raw counter {m.group()} in {expr}"


def test_rates_use_the_rate_interval() -> None:
    for title, expr in exprs():
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"{title!r}: window [{window}] in {expr}"


def test_every_selector_is_filtered_by_instance() -> None:
    for title, expr in exprs():
        for m in METRIC.finditer(expr):
            selector = SELECTOR.match(expr, m.end())
            assert selector and INSTANCE_FILTER in selector.group(1), f"{title!r}: {m.group()} unfiltered in {expr}"


def test_the_checks_catch_mistakes(exported: tuple[set[str], set[str]]) -> None:
    """The helpers above are not vacuous."""
    names, counters = exported
    assert "ebpflb_gateway_packets" not in names  # the counter's sample is ebpflb_gateway_packets_total
    assert "ebpflb_gateway_weight" in names and "ebpflb_gateway_weight" not in counters
    expr = "sum(rate(ebpflb_flows_created_total[5m])) / ebpflb_flows_moved_total"
    inner, outer = (m.start() for m in METRIC.finditer(expr))
    assert "rate" in enclosing_functions(expr, inner)
    assert not any(f in RATE_FUNCTIONS for f in enclosing_functions(expr, outer))
